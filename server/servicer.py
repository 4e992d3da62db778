"""aifb.v1.ServerService: a thin adapter from protobuf requests to the ServiceManager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from aifb.mesh.access import user_caller
from aifb.mesh.auth import Principal, current_principal
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.names import parse_service_id
from aifb.server.convert import (
    recipe_to_proto,
    resource_request_from_proto,
    resources_to_proto,
    service_to_proto,
)
from aifb.server.deploy import Deployer
from aifb.server.listing import page, parse_filter
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.recipes.catalog import runnable_here
from aifb.v1 import server_pb2, server_pb2_grpc

__all__ = ["ServerServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]

_EVENT_KINDS = {
    server_pb2.SERVICE_EVENT_KIND_STARTING: EventKind.STARTING,
    server_pb2.SERVICE_EVENT_KIND_READY: EventKind.READY,
    server_pb2.SERVICE_EVENT_KIND_EXITED: EventKind.EXITED,
}
_MAX_LOG_TAIL = 4 * 1024 * 1024


def _user() -> Principal:
    principal = current_principal.get()
    return principal




def _tail(path: str, limit: int) -> tuple[str, bool]:
    if not path:
        return "", False
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    except FileNotFoundError:
        return "", False
    return data.decode("utf-8", errors="replace"), size > limit


class ServerServicer(server_pb2_grpc.ServerServiceServicer):
    def __init__(self, manager: ServiceManager, deployer: Deployer) -> None:
        self.manager = manager
        self.deployer = deployer
        # The hub hands the same immutable record to every watcher: convert it once, not once
        # per stream (with 1,000 watchers that conversion was most of a transition's CPU).
        self._last_response: dict[str, tuple[ServiceRecord, server_pb2.WatchServiceResponse]] = {}

    def _watch_response(self, record: ServiceRecord) -> server_pb2.WatchServiceResponse:
        cached = self._last_response.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        if len(self._last_response) > 10_000:
            self._last_response.clear()
        response = server_pb2.WatchServiceResponse(service=service_to_proto(record))
        self._last_response[record.id] = (record, response)
        return response

    async def ListRecipes(self, request: server_pb2.ListRecipesRequest, context: Ctx
                          ) -> server_pb2.ListRecipesResponse:
        user_caller()
        return server_pb2.ListRecipesResponse(recipes=[
            recipe_to_proto(r, runnable=runnable_here(r, self.deployer.which))
            for r in self.deployer.catalog.list()])

    async def GetRecipe(self, request: server_pb2.GetRecipeRequest, context: Ctx
                        ) -> server_pb2.GetRecipeResponse:
        user_caller()
        if not request.name:
            raise InvalidArgument("name is required", field="name")
        recipe = self.deployer.catalog.get(request.name)
        return server_pb2.GetRecipeResponse(
            recipe=recipe_to_proto(recipe, runnable=runnable_here(recipe, self.deployer.which)))

    async def RenderService(self, request: server_pb2.RenderServiceRequest, context: Ctx
                            ) -> server_pb2.RenderServiceResponse:
        user_caller()
        if not request.recipe:
            raise InvalidArgument("recipe is required", field="recipe")
        prepared = self.deployer.render(request.recipe, dict(request.parameters),
                                        resource_request_from_proto(request.resources),
                                        jobs_dir=self.manager.home / "jobs")
        return server_pb2.RenderServiceResponse(
            batch_script=prepared.script, parameters=prepared.parameters,
            resources=resources_to_proto(prepared.spec.resources))

    async def CreateService(self, request: server_pb2.CreateServiceRequest, context: Ctx
                            ) -> server_pb2.CreateServiceResponse:
        principal = user_caller()
        if not request.recipe:
            raise InvalidArgument("recipe is required", field="recipe")
        record = await self.manager.create(
            principal, request.recipe, dict(request.parameters),
            resource_request_from_proto(request.resources), dict(request.labels),
            request.request_id)
        return server_pb2.CreateServiceResponse(service=service_to_proto(record))

    async def GetService(self, request: server_pb2.GetServiceRequest, context: Ctx
                         ) -> server_pb2.GetServiceResponse:
        record = self.manager.get(user_caller(), request.name)
        return server_pb2.GetServiceResponse(service=service_to_proto(record))

    async def ListServices(self, request: server_pb2.ListServicesRequest, context: Ctx
                           ) -> server_pb2.ListServicesResponse:
        records = self.manager.owned(user_caller())
        result = page(records, page_size=request.page_size, token=request.page_token,
                      filter_text=request.filter)
        return server_pb2.ListServicesResponse(
            services=[service_to_proto(r) for r in result.items],
            next_page_token=result.next_token)

    async def DeleteService(self, request: server_pb2.DeleteServiceRequest, context: Ctx
                            ) -> server_pb2.DeleteServiceResponse:
        record = await self.manager.delete(user_caller(), request.name)
        return server_pb2.DeleteServiceResponse(service=service_to_proto(record))

    async def WatchService(self, request: server_pb2.WatchServiceRequest, context: Ctx
                           ) -> AsyncIterator[server_pb2.WatchServiceResponse]:
        principal = user_caller()
        sid = parse_service_id(request.name)
        hub = self.manager.hub
        sub = hub.subscribe(lambda r: r.id == sid)
        try:
            current = self.manager.get(principal, sid)
            yield server_pb2.WatchServiceResponse(service=service_to_proto(current))
            last = current.revision
            if current.terminal:
                return
            async for record in hub.iterate(sub):
                if record.revision <= last:
                    continue  # already sent (published between subscribe and snapshot)
                last = record.revision
                yield self._watch_response(record)
                if record.terminal:
                    return
        finally:
            hub.unsubscribe(sub)

    async def WatchServices(self, request: server_pb2.WatchServicesRequest, context: Ctx
                            ) -> AsyncIterator[server_pb2.WatchServicesResponse]:
        principal = user_caller()
        accept = parse_filter(request.filter)
        hub = self.manager.hub

        def mine(record: ServiceRecord) -> bool:
            return record.owner == principal.user and accept(record)

        sub = hub.subscribe(mine)
        try:
            seen: dict[str, int] = {}
            if request.include_snapshot:
                for record in self.manager.owned(principal):
                    if accept(record):
                        seen[record.id] = record.revision
                        yield server_pb2.WatchServicesResponse(service=service_to_proto(record))
            async for record in hub.iterate(sub):
                if record.revision <= seen.get(record.id, 0):
                    continue
                seen[record.id] = record.revision
                yield server_pb2.WatchServicesResponse(service=service_to_proto(record))
        finally:
            hub.unsubscribe(sub)

    async def ReportServiceEvent(self, request: server_pb2.ReportServiceEventRequest,
                                 context: Ctx) -> server_pb2.ReportServiceEventResponse:
        kind = _EVENT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind must be STARTING, READY or EXITED", field="kind")
        record = await self.manager.report_event(
            _user(), request.name, kind, host=request.endpoint.host,
            port=request.endpoint.port, url=request.endpoint.url,
            exit_code=request.exit_code if request.HasField("exit_code") else None,
            log_tail=request.log_tail, message=request.message)
        return server_pb2.ReportServiceEventResponse(service=service_to_proto(record))

    async def GetServiceLogs(self, request: server_pb2.GetServiceLogsRequest, context: Ctx
                             ) -> server_pb2.GetServiceLogsResponse:
        record = self.manager.get(user_caller(), request.name)
        if request.tail_bytes < 0 or request.tail_bytes > _MAX_LOG_TAIL:
            raise InvalidArgument(f"tail_bytes must be 0..{_MAX_LOG_TAIL}", field="tail_bytes")
        limit = request.tail_bytes or 65536
        out, cut_out = _tail(record.stdout_path, limit)
        err, cut_err = ("", False)
        if record.stderr_path != record.stdout_path:
            err, cut_err = _tail(record.stderr_path, limit)
        return server_pb2.GetServiceLogsResponse(stdout=out, stderr=err,
                                                 truncated=cut_out or cut_err)

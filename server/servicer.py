"""aifb.v1.ServerService: a thin adapter from protobuf requests to the ServiceManager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from aifb.mesh.access import user_caller
from aifb.mesh.auth import current_principal
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.memo import ConvertedOnce
from aifb.server.convert import (
    recipe_to_proto,
    resource_request_from_proto,
    resources_to_proto,
    restart_override_from_proto,
    service_to_proto,
)
from aifb.server.deploy import Deployer
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.model import ServiceRecord
from aifb.v1 import server_pb2, server_pb2_grpc

__all__ = ["ServerServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]

_EVENT_KINDS = {
    server_pb2.SERVICE_EVENT_KIND_STARTING: EventKind.STARTING,
    server_pb2.SERVICE_EVENT_KIND_READY: EventKind.READY,
    server_pb2.SERVICE_EVENT_KIND_EXITED: EventKind.EXITED,
    server_pb2.SERVICE_EVENT_KIND_RESTARTING: EventKind.RESTARTING,
}


class ServerServicer(server_pb2_grpc.ServerServiceServicer):
    def __init__(self, manager: ServiceManager, deployer: Deployer) -> None:
        self.manager = manager
        self.deployer = deployer
        # Each record converted once for all its watchers (one entry per service).
        self._watch_responses: ConvertedOnce[ServiceRecord, server_pb2.WatchServiceResponse] = (
            ConvertedOnce(lambda r: server_pb2.WatchServiceResponse(service=self._proto(r)),
                          key=lambda r: r.id, max_entries=10_000))

    def _proto(self, record: ServiceRecord) -> server_pb2.Service:
        return service_to_proto(record, self.manager.replicas_of(record))

    async def ListRecipes(self, request: server_pb2.ListRecipesRequest, context: Ctx
                          ) -> server_pb2.ListRecipesResponse:
        user_caller()
        return server_pb2.ListRecipesResponse(recipes=[
            recipe_to_proto(recipe, runnable=runnable)
            for recipe, runnable in self.deployer.recipes()])

    async def GetRecipe(self, request: server_pb2.GetRecipeRequest, context: Ctx
                        ) -> server_pb2.GetRecipeResponse:
        user_caller()
        recipe, runnable = self.deployer.recipe(request.name)
        return server_pb2.GetRecipeResponse(recipe=recipe_to_proto(recipe, runnable=runnable))

    async def RenderService(self, request: server_pb2.RenderServiceRequest, context: Ctx
                            ) -> server_pb2.RenderServiceResponse:
        user_caller()
        if not request.recipe:
            raise InvalidArgument("recipe is required", field="recipe")
        prepared = self.manager.render(request.recipe, dict(request.parameters),
                                       resource_request_from_proto(request.resources),
                                       restart_override_from_proto(request.restart_policy))
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
            request.request_id, restart_override_from_proto(request.restart_policy),
            replicas=request.replicas, min_ready=request.min_ready,
            renew_before=request.renew_before.ToNanoseconds() / 1e9)
        return server_pb2.CreateServiceResponse(service=self._proto(record))

    async def GetService(self, request: server_pb2.GetServiceRequest, context: Ctx
                         ) -> server_pb2.GetServiceResponse:
        record = self.manager.get(user_caller(), request.name)
        return server_pb2.GetServiceResponse(service=self._proto(record))

    async def ListServices(self, request: server_pb2.ListServicesRequest, context: Ctx
                           ) -> server_pb2.ListServicesResponse:
        result = self.manager.page(user_caller(), page_size=request.page_size,
                                   token=request.page_token, filter_text=request.filter)
        return server_pb2.ListServicesResponse(
            services=[self._proto(r) for r in result.items],
            next_page_token=result.next_token)

    async def DeleteService(self, request: server_pb2.DeleteServiceRequest, context: Ctx
                            ) -> server_pb2.DeleteServiceResponse:
        record = await self.manager.delete(user_caller(), request.name)
        return server_pb2.DeleteServiceResponse(service=self._proto(record))

    async def WatchService(self, request: server_pb2.WatchServiceRequest, context: Ctx
                           ) -> AsyncIterator[server_pb2.WatchServiceResponse]:
        async for record in self.manager.watch(user_caller(), request.name):
            yield self._watch_responses.get(record)

    async def WatchServices(self, request: server_pb2.WatchServicesRequest, context: Ctx
                            ) -> AsyncIterator[server_pb2.WatchServicesResponse]:
        async for record in self.manager.watch_all(user_caller(), request.filter,
                                                   snapshot=request.include_snapshot):
            yield server_pb2.WatchServicesResponse(service=self._proto(record))

    async def ReportServiceEvent(self, request: server_pb2.ReportServiceEventRequest,
                                 context: Ctx) -> server_pb2.ReportServiceEventResponse:
        kind = _EVENT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind must be STARTING, READY, EXITED or RESTARTING",
                                  field="kind")
        # A job's own token (or a user's): the manager checks that it may report for `name`.
        record = await self.manager.report_event(
            current_principal.get(), request.name, kind, host=request.endpoint.host,
            port=request.endpoint.port, url=request.endpoint.url,
            exit_code=request.exit_code if request.HasField("exit_code") else None,
            log_tail=request.log_tail, message=request.message, restarts=request.restarts,
            workers=tuple(request.workers))
        return server_pb2.ReportServiceEventResponse(service=self._proto(record))

    async def ScaleService(self, request: server_pb2.ScaleServiceRequest, context: Ctx
                           ) -> server_pb2.ScaleServiceResponse:
        record = await self.manager.scale(user_caller(), request.name, request.replicas,
                                          request.min_ready)
        return server_pb2.ScaleServiceResponse(service=self._proto(record))

    async def GetServiceLogs(self, request: server_pb2.GetServiceLogsRequest, context: Ctx
                             ) -> server_pb2.GetServiceLogsResponse:
        logs = self.manager.logs(user_caller(), request.name, request.tail_bytes)
        return server_pb2.GetServiceLogsResponse(stdout=logs.stdout, stderr=logs.stderr,
                                                 truncated=logs.truncated)

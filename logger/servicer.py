"""aifb.v1.LoggerService: a thin adapter from requests to the LoggerAgent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from aifb.mesh.access import operator_caller
from aifb.mesh.bounds import check_matchers
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.server import ServiceBinding
from aifb.v1 import logger_pb2, logger_pb2_grpc

if TYPE_CHECKING:
    from aifb.logger.agent import LoggerAgent, TailEvent

__all__ = ["LoggerServicer", "logger_binding"]

Ctx = grpc.aio.ServicerContext[Any, Any]
_MAX_INITIAL = 10000


def _response(event: TailEvent) -> logger_pb2.TailLogsResponse:
    stamp = Timestamp()
    stamp.FromNanoseconds(event.time_ns)
    return logger_pb2.TailLogsResponse(labels=event.labels, time=stamp, line=event.text)


class LoggerServicer(logger_pb2_grpc.LoggerServiceServicer):
    def __init__(self, agent: LoggerAgent) -> None:
        self.agent = agent

    async def ListLogSources(self, request: logger_pb2.ListLogSourcesRequest, context: Ctx
                             ) -> logger_pb2.ListLogSourcesResponse:
        operator_caller("the logger's sources")
        return logger_pb2.ListLogSourcesResponse(sources=[
            logger_pb2.LogSource(path=s.path, labels=s.labels, offset=s.offset,
                                 size_bytes=s.size_bytes, rotations=s.rotations,
                                 truncations=s.truncations)
            for s in self.agent.statuses()])

    async def TailLogs(self, request: logger_pb2.TailLogsRequest, context: Ctx
                       ) -> AsyncIterator[logger_pb2.TailLogsResponse]:
        operator_caller("the logger's live lines")
        check_matchers("labels", request.labels)
        if not 0 <= request.initial_lines <= _MAX_INITIAL:
            raise InvalidArgument(f"initial_lines must be 0..{_MAX_INITIAL}",
                                  field="initial_lines")
        async for event in self.agent.tail(dict(request.labels), request.initial_lines,
                                           follow=request.follow):
            yield _response(event)


def logger_binding(agent: LoggerAgent) -> ServiceBinding:
    servicer = LoggerServicer(agent)
    return ServiceBinding(
        full_name=logger_pb2.DESCRIPTOR.services_by_name["LoggerService"].full_name,
        add_to_server=lambda s: logger_pb2_grpc.add_LoggerServiceServicer_to_server(
            servicer, s))

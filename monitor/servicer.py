"""aifb.v1.MonitorService: a thin adapter from requests to the MonitorAgent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from aifb.mesh.access import operator_caller
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.server import ServiceBinding
from aifb.v1 import monitor_pb2, monitor_pb2_grpc

if TYPE_CHECKING:
    from aifb.monitor.agent import MonitorAgent

__all__ = ["MonitorServicer", "monitor_binding"]

Ctx = grpc.aio.ServicerContext[Any, Any]


def _shape(snapshot: monitor_pb2.Snapshot, include_metrics: bool) -> monitor_pb2.Snapshot:
    if include_metrics:
        return snapshot
    return monitor_pb2.Snapshot(summary=snapshot.summary)


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, agent: MonitorAgent) -> None:
        self.agent = agent

    async def GetSnapshot(self, request: monitor_pb2.GetSnapshotRequest, context: Ctx
                          ) -> monitor_pb2.GetSnapshotResponse:
        operator_caller("the node's snapshot")
        snapshot = await self.agent.collect_now()
        return monitor_pb2.GetSnapshotResponse(
            snapshot=_shape(snapshot, request.include_metrics))

    async def WatchSnapshots(self, request: monitor_pb2.WatchSnapshotsRequest, context: Ctx
                             ) -> AsyncIterator[monitor_pb2.WatchSnapshotsResponse]:
        operator_caller("the node's snapshots")
        if request.interval_ms and request.interval_ms < 200:
            raise InvalidArgument("interval_ms must be 0 or at least 200", field="interval_ms")
        async for snapshot in self.agent.snapshots(request.interval_ms / 1000):
            yield monitor_pb2.WatchSnapshotsResponse(
                snapshot=_shape(snapshot, request.include_metrics))


def monitor_binding(agent: MonitorAgent) -> ServiceBinding:
    servicer = MonitorServicer(agent)
    return ServiceBinding(
        full_name=monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
        add_to_server=lambda s: monitor_pb2_grpc.add_MonitorServiceServicer_to_server(
            servicer, s))

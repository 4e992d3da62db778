"""aifb.v1.BenchmarkService: a thin adapter from protobuf requests to the BenchmarkManager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from aifb.client.service.convert import (
    load_from_proto,
    progress_to_proto,
    record_to_proto,
    workload_to_proto,
)
from aifb.client.service.manager import BenchmarkManager, CreateRequest
from aifb.client.workloads.registry import all_kinds
from aifb.mesh.access import user_caller
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from aifb.v1 import client_pb2_grpc

__all__ = ["BenchmarkServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]
_FORMATS = {C.REPORT_FORMAT_UNSPECIFIED: "json", C.REPORT_FORMAT_JSON: "json",
            C.REPORT_FORMAT_MARKDOWN: "md", C.REPORT_FORMAT_HTML: "html",
            C.REPORT_FORMAT_PARQUET: "parquet"}


class BenchmarkServicer(client_pb2_grpc.BenchmarkServiceServicer):
    def __init__(self, manager: BenchmarkManager) -> None:
        self.manager = manager

    async def ListWorkloads(self, request: C.ListWorkloadsRequest, context: Ctx
                            ) -> C.ListWorkloadsResponse:
        user_caller()
        return C.ListWorkloadsResponse(workloads=[workload_to_proto(k) for k in all_kinds()])

    async def CreateBenchmark(self, request: C.CreateBenchmarkRequest, context: Ctx
                              ) -> C.CreateBenchmarkResponse:
        principal = user_caller()
        target = request.WhichOneof("target")
        req = CreateRequest(
            workload=request.workload, service=request.service if target == "service" else "",
            url=request.url if target == "url" else "", parameters=dict(request.parameters),
            load=load_from_proto(request.load, present=request.HasField("load")),
            labels=dict(request.labels), request_id=request.request_id,
            validate_only=request.validate_only, spread=request.spread)
        record = await self.manager.create(principal, req)
        return C.CreateBenchmarkResponse(benchmark=record_to_proto(record))

    async def GetBenchmark(self, request: C.GetBenchmarkRequest, context: Ctx
                           ) -> C.GetBenchmarkResponse:
        return C.GetBenchmarkResponse(
            benchmark=record_to_proto(self.manager.get(user_caller(), request.name)))

    async def ListBenchmarks(self, request: C.ListBenchmarksRequest, context: Ctx
                             ) -> C.ListBenchmarksResponse:
        items, token = self.manager.page(user_caller(), page_size=request.page_size,
                                         token=request.page_token, filter_text=request.filter)
        return C.ListBenchmarksResponse(benchmarks=[record_to_proto(r) for r in items],
                                        next_page_token=token)

    async def CancelBenchmark(self, request: C.CancelBenchmarkRequest, context: Ctx
                              ) -> C.CancelBenchmarkResponse:
        record = await self.manager.cancel(user_caller(), request.name)
        return C.CancelBenchmarkResponse(benchmark=record_to_proto(record))

    async def WatchBenchmark(self, request: C.WatchBenchmarkRequest, context: Ctx
                             ) -> AsyncIterator[C.WatchBenchmarkResponse]:
        async for record, progress in self.manager.watch(user_caller(), request.name):
            msg = C.WatchBenchmarkResponse(benchmark=record_to_proto(record))
            if progress is not None:
                msg.progress.CopyFrom(progress_to_proto(progress))
            yield msg

    async def GetBenchmarkReport(self, request: C.GetBenchmarkReportRequest, context: Ctx
                                 ) -> C.GetBenchmarkReportResponse:
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown report format {request.format}", field="format")
        report = self.manager.report(user_caller(), request.name, fmt)
        return C.GetBenchmarkReportResponse(format=request.format or C.REPORT_FORMAT_JSON,
                                            content=report.content,
                                            directory=str(report.directory))

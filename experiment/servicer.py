"""aifb.v1.ExperimentService: a thin adapter from protobuf requests to the ExperimentManager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from aifb.experiment.convert import experiment_to_proto, study_from_proto
from aifb.experiment.manager import ExperimentManager
from aifb.experiment.model import ExperimentRecord
from aifb.mesh.access import user_caller
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.memo import ConvertedOnce
from aifb.v1 import client_pb2 as C
from aifb.v1 import experiment_pb2 as E
from aifb.v1 import experiment_pb2_grpc

__all__ = ["ExperimentServicer"]

Ctx = grpc.aio.ServicerContext[Any, Any]
_FORMATS = {C.REPORT_FORMAT_UNSPECIFIED: "json", C.REPORT_FORMAT_JSON: "json",
            C.REPORT_FORMAT_MARKDOWN: "md", C.REPORT_FORMAT_HTML: "html",
            C.REPORT_FORMAT_PARQUET: "parquet"}


class ExperimentServicer(experiment_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, manager: ExperimentManager) -> None:
        self.manager = manager
        # Each watched experiment's record converted once for all its streams; a few entries
        # only, each may be megabytes.
        self._converted: ConvertedOnce[ExperimentRecord, E.Experiment] = ConvertedOnce(
            experiment_to_proto, key=lambda r: r.id, max_entries=16)

    async def CreateExperiment(self, request: E.CreateExperimentRequest, context: Ctx
                               ) -> E.CreateExperimentResponse:
        principal = user_caller()
        if not request.HasField("study"):
            raise InvalidArgument("study is required", field="study")
        record = await self.manager.create(principal, study_from_proto(request.study),
                                           dict(request.labels), request.request_id)
        return E.CreateExperimentResponse(experiment=experiment_to_proto(record))

    async def GetExperiment(self, request: E.GetExperimentRequest, context: Ctx
                            ) -> E.GetExperimentResponse:
        return E.GetExperimentResponse(
            experiment=experiment_to_proto(self.manager.get(user_caller(), request.name)))

    async def ListExperiments(self, request: E.ListExperimentsRequest, context: Ctx
                              ) -> E.ListExperimentsResponse:
        items, token = self.manager.page(user_caller(), page_size=request.page_size,
                                         token=request.page_token, filter_text=request.filter)
        return E.ListExperimentsResponse(experiments=[experiment_to_proto(r) for r in items],
                                         next_page_token=token)

    async def WatchExperiment(self, request: E.WatchExperimentRequest, context: Ctx
                              ) -> AsyncIterator[E.WatchExperimentResponse]:
        async for record, trial, progress in self.manager.watch(user_caller(), request.name):
            if progress is not None:  # a second of a running benchmark: the experiment as sent
                yield E.WatchExperimentResponse(trial=trial, progress=progress)
                continue
            # One conversion per record, not per stream.
            yield E.WatchExperimentResponse(experiment=self._converted.get(record))

    async def CancelExperiment(self, request: E.CancelExperimentRequest, context: Ctx
                               ) -> E.CancelExperimentResponse:
        record = await self.manager.cancel(user_caller(), request.name)
        return E.CancelExperimentResponse(experiment=experiment_to_proto(record))

    async def GetExperimentReport(self, request: E.GetExperimentReportRequest, context: Ctx
                                  ) -> E.GetExperimentReportResponse:
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown report format {request.format}", field="format")
        content = await self.manager.report(user_caller(), request.name, fmt)
        return E.GetExperimentReportResponse(format=request.format or C.REPORT_FORMAT_JSON,
                                             content=content)

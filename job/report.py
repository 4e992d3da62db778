"""The in-job side of ReportServiceEvent: reports STARTING, READY, RESTARTING and EXITED."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf.duration_pb2 import Duration
from opentelemetry.propagate import inject

from aifb.job.supervise import LoggingReporter
from aifb.mesh.channel import open_sync_channel
from aifb.mesh.tls import ClientTls
from aifb.mesh.tracing import context_from_env, make_tracer_provider
from aifb.v1 import common_pb2, server_pb2, server_pb2_grpc

__all__ = ["GrpcReporter", "reporter_from_env"]

log = logging.getLogger(__name__)


class GrpcReporter:
    """Reports to ServerService with the job's report token; failures are logged, not fatal
    (a job must not die because the login node restarted)."""

    def __init__(self, address: str, service: str, token: str, *, job_id: str = "",
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 url_scheme: str = "", timeout: float = 15.0,
                 environ: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.job_id = job_id
        self.timeout = timeout
        self.url_scheme = url_scheme
        env = os.environ if environ is None else environ
        # Spans of the job join the trace that created it (TRACEPARENT) and are exported by
        # OTLP when the server passed an endpoint; the report RPCs carry the context onwards.
        self.provider = make_tracer_provider("aifb-job",
                                             otlp_endpoint=env.get("AIFB_OTLP_ENDPOINT", ""))
        self.channel = open_sync_channel(address, token=token, ca_file=ca_file,
                                         cert_file=cert_file, key_file=key_file)
        self.stub = server_pb2_grpc.ServerServiceStub(self.channel)
        self.tracer = self.provider.get_tracer("aifb.jobrun")
        self.parent = context_from_env(env)

    def _send(self, request: server_pb2.ReportServiceEventRequest, what: str) -> None:
        request.name = self.service
        request.job_id = self.job_id
        with self.tracer.start_as_current_span(f"aifb.job.{what}", context=self.parent):
            carrier: dict[str, str] = {}
            inject(carrier)  # W3C traceparent: the server's span joins the job's trace
            try:
                self.stub.ReportServiceEvent(request, timeout=self.timeout, wait_for_ready=True,
                                             metadata=tuple(carrier.items()))
            except grpc.RpcError as exc:
                log.warning("could not report %s to the server: %s", what, exc.details())

    def starting(self) -> None:
        self._send(server_pb2.ReportServiceEventRequest(
            kind=server_pb2.SERVICE_EVENT_KIND_STARTING), "starting")

    def ready(self, host: str, port: int, startup_seconds: float,
              workers: Sequence[str] = ()) -> None:
        duration = Duration()
        duration.FromNanoseconds(int(startup_seconds * 1e9))
        url = f"{self.url_scheme}://{host}:{port}/" if self.url_scheme else ""
        self._send(server_pb2.ReportServiceEventRequest(
            kind=server_pb2.SERVICE_EVENT_KIND_READY,
            endpoint=common_pb2.Endpoint(host=host, port=port, url=url),
            startup_duration=duration, workers=list(workers)), "ready")

    def restarting(self, restarts: int, reason: str) -> None:
        self._send(server_pb2.ReportServiceEventRequest(
            kind=server_pb2.SERVICE_EVENT_KIND_RESTARTING, restarts=restarts,
            message=reason[:4096]), "restarting")

    def exited(self, exit_code: int, log_tail: str, message: str) -> None:
        self._send(server_pb2.ReportServiceEventRequest(
            kind=server_pb2.SERVICE_EVENT_KIND_EXITED, exit_code=exit_code,
            log_tail=log_tail[-16000:], message=message), "exited")

    def close(self) -> None:
        self.channel.close()
        self.provider.shutdown()


def reporter_from_env(environ: Mapping[str, str] | None = None) -> GrpcReporter | LoggingReporter:
    """AIFB_SERVER, AIFB_SERVICE, AIFB_REPORT_TOKEN (and AIFB_CA_FILE, AIFB_CLIENT_CERT,
    AIFB_CLIENT_KEY for TLS and mTLS) -> a reporter."""
    env = os.environ if environ is None else environ
    address, service, token = (env.get("AIFB_SERVER", ""), env.get("AIFB_SERVICE", ""),
                               env.get("AIFB_REPORT_TOKEN", ""))
    if not (address and service and token):
        return LoggingReporter()
    job_id = env.get("SLURM_JOB_ID") or env.get("AIFB_LOCAL_JOB_ID", "")
    tls = ClientTls.from_environment(env)
    return GrpcReporter(address, service, token, job_id=job_id, ca_file=tls.ca_file,
                        cert_file=tls.cert_file, key_file=tls.key_file,
                        url_scheme=env.get("AIFB_URL_SCHEME", ""), environ=env)

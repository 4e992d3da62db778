"""Conversions between aifb.v1 benchmark messages and the BenchmarkService's domain objects."""

from __future__ import annotations

import json

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from aifb.client.engine.progress import Progress
from aifb.client.engine.results import RunState
from aifb.client.runs.options import DEFAULT_ERROR_BUDGET, LoadOptions
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.workloads.registry import WorkloadKind
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C

__all__ = ["STATE_TO_PROTO", "load_from_proto", "load_to_proto", "progress_to_proto",
           "record_to_proto", "workload_to_proto"]

_MODES = {C.LOAD_MODE_CLOSED: "closed", C.LOAD_MODE_CONSTANT: "constant",
          C.LOAD_MODE_POISSON: "poisson", C.LOAD_MODE_RAMP: "ramp", C.LOAD_MODE_STEP: "step",
          C.LOAD_MODE_SWEEP: "sweep", C.LOAD_MODE_TRACE: "trace", C.LOAD_MODE_UNSPECIFIED: ""}
_MODES_BACK = {v: k for k, v in _MODES.items()}
_ENGINES = {C.LOAD_ENGINE_UNSPECIFIED: "inprocess", C.LOAD_ENGINE_INPROCESS: "inprocess",
            C.LOAD_ENGINE_SPARK: "spark"}
STATE_TO_PROTO = {RunState.PENDING: C.BENCHMARK_STATE_PENDING,
                  RunState.RUNNING: C.BENCHMARK_STATE_RUNNING,
                  RunState.SUCCEEDED: C.BENCHMARK_STATE_SUCCEEDED,
                  RunState.FAILED: C.BENCHMARK_STATE_FAILED,
                  RunState.CANCELLED: C.BENCHMARK_STATE_CANCELLED}


def _seconds(d: Duration, field: str) -> float:
    if d.seconds < 0 or d.nanos < 0:
        raise InvalidArgument(f"{field} must not be negative", field=field)
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def load_from_proto(msg: C.LoadProfile, *, present: bool) -> LoadOptions:
    if msg.mode not in _MODES:
        raise InvalidArgument(f"unknown load.mode {msg.mode}", field="load.mode")
    if msg.engine not in _ENGINES:
        raise InvalidArgument(f"unknown load.engine {msg.engine}", field="load.engine")
    # absent: 10 s, or a trace replay's whole trace
    duration = (_seconds(msg.duration, "load.duration") if msg.HasField("duration")
                else 0.0 if msg.mode == C.LOAD_MODE_TRACE else 10.0)
    budget = msg.error_budget if msg.error_budget else DEFAULT_ERROR_BUDGET
    if not present:
        return LoadOptions(concurrency=1)
    return LoadOptions(
        mode=_MODES[msg.mode], concurrency=msg.concurrency, rate=msg.rate,
        start_rate=msg.start_rate, step_rate=msg.step_rate,
        step_duration_s=_seconds(msg.step_duration, "load.step_duration"),
        burstiness=msg.burstiness or 1.0, duration_s=duration, max_requests=msg.max_requests,
        warmup_s=_seconds(msg.warmup, "load.warmup"),
        cooldown_s=_seconds(msg.cooldown, "load.cooldown"), error_budget=budget,
        slo=dict(msg.slo), engine=_ENGINES[msg.engine], spark_master=msg.spark_master,
        partitions=msg.partitions, record_samples=msg.record_samples,
        max_samples=msg.max_samples, workers=msg.workers or 1,
        seed=msg.seed if msg.HasField("seed") else None,
        start_concurrency=msg.start_concurrency, trace_file=msg.trace_file,
        time_scale=msg.time_scale or 1.0, cancel_fraction=msg.cancel_fraction,
        cancel_after_s=_seconds(msg.cancel_after, "load.cancel_after"),
        time_slice_s=_seconds(msg.time_slice, "load.time_slice"))


def load_to_proto(o: LoadOptions) -> C.LoadProfile:
    return C.LoadProfile(
        mode=_MODES_BACK.get(o.mode, C.LOAD_MODE_UNSPECIFIED), concurrency=o.concurrency,
        rate=o.rate, start_rate=o.start_rate, step_rate=o.step_rate,
        step_duration=_duration(o.step_duration_s), burstiness=o.burstiness,
        duration=_duration(o.duration_s), max_requests=o.max_requests,
        warmup=_duration(o.warmup_s), cooldown=_duration(o.cooldown_s),
        error_budget=o.error_budget, slo=o.slo,
        engine=C.LOAD_ENGINE_SPARK if o.engine == "spark" else C.LOAD_ENGINE_INPROCESS,
        spark_master=o.spark_master, partitions=o.partitions, record_samples=o.record_samples,
        max_samples=o.max_samples, workers=o.workers, seed=o.seed,
        start_concurrency=o.start_concurrency, trace_file=o.trace_file, time_scale=o.time_scale,
        cancel_fraction=o.cancel_fraction, cancel_after=_duration(o.cancel_after_s),
        time_slice=_duration(o.time_slice_s))


def progress_to_proto(p: Progress) -> C.ProgressSample:
    extra = {**p.extra, "dropped": float(p.dropped), "total_requests": float(p.total_requests),
             "total_errors": float(p.total_errors), "cancelled": float(p.cancelled),
             "total_cancelled": float(p.total_cancelled)}
    return C.ProgressSample(
        elapsed=_duration(p.elapsed_s), requests=p.requests, errors=p.errors,
        achieved_rate=p.achieved_rate, target_rate=p.target_rate, latency_p50_seconds=p.p50_s,
        latency_p99_seconds=p.p99_s, in_flight=p.in_flight,
        schedule_lag_p99_seconds=p.lag_p99_s, extra=extra)


def record_to_proto(r: BenchmarkRecord) -> C.Benchmark:
    msg = C.Benchmark(
        name=r.name if r.id else "", state=STATE_TO_PROTO[r.state], owner=r.owner,
        workload=r.workload, resolved_url=r.resolved_url, parameters=r.parameters,
        load=load_to_proto(r.load),
        labels=r.labels, state_message=r.state_message, trace_id=r.trace_id,
        create_time=_timestamp(r.create_time), start_time=_timestamp(r.start_time),
        end_time=_timestamp(r.end_time))
    if r.service:
        msg.service = r.service
    else:
        msg.url = r.url
    if r.last_progress is not None:
        msg.last_progress.CopyFrom(progress_to_proto(r.last_progress))
    return msg


def workload_to_proto(kind: WorkloadKind) -> C.Workload:
    schema = kind.params.model_json_schema()
    required = set(schema.get("required", []))
    params = []
    for name, prop in sorted(schema.get("properties", {}).items()):
        default = prop.get("default")
        params.append(C.WorkloadParameter(
            name=name, type=str(prop.get("type") or (prop.get("anyOf") and "any") or "object"),
            description=str(prop.get("description", "")),
            default_value="" if default is None else (
                default if isinstance(default, str) else json.dumps(default)),
            required=name in required))
    return C.Workload(name=kind.name, description=kind.description, parameters=params,
                      parameters_json_schema=kind.schema_json())

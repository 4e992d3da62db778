import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BenchmarkState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BENCHMARK_STATE_UNSPECIFIED: _ClassVar[BenchmarkState]
    BENCHMARK_STATE_PENDING: _ClassVar[BenchmarkState]
    BENCHMARK_STATE_RUNNING: _ClassVar[BenchmarkState]
    BENCHMARK_STATE_SUCCEEDED: _ClassVar[BenchmarkState]
    BENCHMARK_STATE_FAILED: _ClassVar[BenchmarkState]
    BENCHMARK_STATE_CANCELLED: _ClassVar[BenchmarkState]

class LoadMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_MODE_UNSPECIFIED: _ClassVar[LoadMode]
    LOAD_MODE_CLOSED: _ClassVar[LoadMode]
    LOAD_MODE_CONSTANT: _ClassVar[LoadMode]
    LOAD_MODE_POISSON: _ClassVar[LoadMode]
    LOAD_MODE_RAMP: _ClassVar[LoadMode]
    LOAD_MODE_STEP: _ClassVar[LoadMode]
    LOAD_MODE_SWEEP: _ClassVar[LoadMode]
    LOAD_MODE_TRACE: _ClassVar[LoadMode]

class LoadEngine(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_ENGINE_UNSPECIFIED: _ClassVar[LoadEngine]
    LOAD_ENGINE_INPROCESS: _ClassVar[LoadEngine]
    LOAD_ENGINE_SPARK: _ClassVar[LoadEngine]

class ReportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_FORMAT_UNSPECIFIED: _ClassVar[ReportFormat]
    REPORT_FORMAT_JSON: _ClassVar[ReportFormat]
    REPORT_FORMAT_MARKDOWN: _ClassVar[ReportFormat]
    REPORT_FORMAT_HTML: _ClassVar[ReportFormat]
    REPORT_FORMAT_PARQUET: _ClassVar[ReportFormat]
BENCHMARK_STATE_UNSPECIFIED: BenchmarkState
BENCHMARK_STATE_PENDING: BenchmarkState
BENCHMARK_STATE_RUNNING: BenchmarkState
BENCHMARK_STATE_SUCCEEDED: BenchmarkState
BENCHMARK_STATE_FAILED: BenchmarkState
BENCHMARK_STATE_CANCELLED: BenchmarkState
LOAD_MODE_UNSPECIFIED: LoadMode
LOAD_MODE_CLOSED: LoadMode
LOAD_MODE_CONSTANT: LoadMode
LOAD_MODE_POISSON: LoadMode
LOAD_MODE_RAMP: LoadMode
LOAD_MODE_STEP: LoadMode
LOAD_MODE_SWEEP: LoadMode
LOAD_MODE_TRACE: LoadMode
LOAD_ENGINE_UNSPECIFIED: LoadEngine
LOAD_ENGINE_INPROCESS: LoadEngine
LOAD_ENGINE_SPARK: LoadEngine
REPORT_FORMAT_UNSPECIFIED: ReportFormat
REPORT_FORMAT_JSON: ReportFormat
REPORT_FORMAT_MARKDOWN: ReportFormat
REPORT_FORMAT_HTML: ReportFormat
REPORT_FORMAT_PARQUET: ReportFormat

class LoadProfile(_message.Message):
    __slots__ = ("mode", "concurrency", "rate", "start_rate", "step_rate", "step_duration", "burstiness", "duration", "max_requests", "warmup", "cooldown", "error_budget", "slo", "engine", "spark_master", "partitions", "record_samples", "max_samples", "workers", "seed", "start_concurrency", "trace_file", "time_scale", "cancel_fraction", "cancel_after", "time_slice")
    class SloEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    START_RATE_FIELD_NUMBER: _ClassVar[int]
    STEP_RATE_FIELD_NUMBER: _ClassVar[int]
    STEP_DURATION_FIELD_NUMBER: _ClassVar[int]
    BURSTINESS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    ERROR_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SPARK_MASTER_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    RECORD_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    START_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FILE_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CANCEL_AFTER_FIELD_NUMBER: _ClassVar[int]
    TIME_SLICE_FIELD_NUMBER: _ClassVar[int]
    mode: LoadMode
    concurrency: int
    rate: float
    start_rate: float
    step_rate: float
    step_duration: _duration_pb2.Duration
    burstiness: float
    duration: _duration_pb2.Duration
    max_requests: int
    warmup: _duration_pb2.Duration
    cooldown: _duration_pb2.Duration
    error_budget: float
    slo: _containers.ScalarMap[str, str]
    engine: LoadEngine
    spark_master: str
    partitions: int
    record_samples: bool
    max_samples: int
    workers: int
    seed: int
    start_concurrency: int
    trace_file: str
    time_scale: float
    cancel_fraction: float
    cancel_after: _duration_pb2.Duration
    time_slice: _duration_pb2.Duration
    def __init__(self, mode: _Optional[_Union[LoadMode, str]] = ..., concurrency: _Optional[int] = ..., rate: _Optional[float] = ..., start_rate: _Optional[float] = ..., step_rate: _Optional[float] = ..., step_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., burstiness: _Optional[float] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_requests: _Optional[int] = ..., warmup: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cooldown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error_budget: _Optional[float] = ..., slo: _Optional[_Mapping[str, str]] = ..., engine: _Optional[_Union[LoadEngine, str]] = ..., spark_master: _Optional[str] = ..., partitions: _Optional[int] = ..., record_samples: _Optional[bool] = ..., max_samples: _Optional[int] = ..., workers: _Optional[int] = ..., seed: _Optional[int] = ..., start_concurrency: _Optional[int] = ..., trace_file: _Optional[str] = ..., time_scale: _Optional[float] = ..., cancel_fraction: _Optional[float] = ..., cancel_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_slice: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ProgressSample(_message.Message):
    __slots__ = ("elapsed", "requests", "errors", "achieved_rate", "target_rate", "latency_p50_seconds", "latency_p99_seconds", "in_flight", "schedule_lag_p99_seconds", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ACHIEVED_RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_LAG_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    elapsed: _duration_pb2.Duration
    requests: int
    errors: int
    achieved_rate: float
    target_rate: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    in_flight: int
    schedule_lag_p99_seconds: float
    extra: _containers.ScalarMap[str, float]
    def __init__(self, elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., achieved_rate: _Optional[float] = ..., target_rate: _Optional[float] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ..., in_flight: _Optional[int] = ..., schedule_lag_p99_seconds: _Optional[float] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Benchmark(_message.Message):
    __slots__ = ("name", "state", "owner", "workload", "service", "url", "resolved_url", "parameters", "load", "labels", "state_message", "create_time", "start_time", "end_time", "last_progress", "trace_id")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_URL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: BenchmarkState
    owner: str
    workload: str
    service: str
    url: str
    resolved_url: str
    parameters: _containers.ScalarMap[str, str]
    load: LoadProfile
    labels: _containers.ScalarMap[str, str]
    state_message: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    last_progress: ProgressSample
    trace_id: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[BenchmarkState, str]] = ..., owner: _Optional[str] = ..., workload: _Optional[str] = ..., service: _Optional[str] = ..., url: _Optional[str] = ..., resolved_url: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., load: _Optional[_Union[LoadProfile, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state_message: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_progress: _Optional[_Union[ProgressSample, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class WorkloadParameter(_message.Message):
    __slots__ = ("name", "type", "description", "default_value", "required")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    description: str
    default_value: str
    required: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., description: _Optional[str] = ..., default_value: _Optional[str] = ..., required: _Optional[bool] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("name", "description", "parameters", "parameters_json_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _containers.RepeatedCompositeFieldContainer[WorkloadParameter]
    parameters_json_schema: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[WorkloadParameter, _Mapping]]] = ..., parameters_json_schema: _Optional[str] = ...) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ("workloads",)
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    def __init__(self, workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ...) -> None: ...

class CreateBenchmarkRequest(_message.Message):
    __slots__ = ("workload", "service", "url", "parameters", "load", "labels", "request_id", "validate_only", "spread")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    workload: str
    service: str
    url: str
    parameters: _containers.ScalarMap[str, str]
    load: LoadProfile
    labels: _containers.ScalarMap[str, str]
    request_id: str
    validate_only: bool
    spread: str
    def __init__(self, workload: _Optional[str] = ..., service: _Optional[str] = ..., url: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., load: _Optional[_Union[LoadProfile, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ..., spread: _Optional[str] = ...) -> None: ...

class CreateBenchmarkResponse(_message.Message):
    __slots__ = ("benchmark",)
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    benchmark: Benchmark
    def __init__(self, benchmark: _Optional[_Union[Benchmark, _Mapping]] = ...) -> None: ...

class GetBenchmarkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetBenchmarkResponse(_message.Message):
    __slots__ = ("benchmark",)
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    benchmark: Benchmark
    def __init__(self, benchmark: _Optional[_Union[Benchmark, _Mapping]] = ...) -> None: ...

class ListBenchmarksRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListBenchmarksResponse(_message.Message):
    __slots__ = ("benchmarks", "next_page_token")
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[Benchmark]
    next_page_token: str
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[Benchmark, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelBenchmarkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelBenchmarkResponse(_message.Message):
    __slots__ = ("benchmark",)
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    benchmark: Benchmark
    def __init__(self, benchmark: _Optional[_Union[Benchmark, _Mapping]] = ...) -> None: ...

class WatchBenchmarkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchBenchmarkResponse(_message.Message):
    __slots__ = ("benchmark", "progress")
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    benchmark: Benchmark
    progress: ProgressSample
    def __init__(self, benchmark: _Optional[_Union[Benchmark, _Mapping]] = ..., progress: _Optional[_Union[ProgressSample, _Mapping]] = ...) -> None: ...

class GetBenchmarkReportRequest(_message.Message):
    __slots__ = ("name", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ReportFormat
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ReportFormat, str]] = ...) -> None: ...

class GetBenchmarkReportResponse(_message.Message):
    __slots__ = ("format", "content", "directory")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    format: ReportFormat
    content: bytes
    directory: str
    def __init__(self, format: _Optional[_Union[ReportFormat, str]] = ..., content: _Optional[bytes] = ..., directory: _Optional[str] = ...) -> None: ...

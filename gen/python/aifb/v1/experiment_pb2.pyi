import datetime

from aifb.v1 import client_pb2 as _client_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_PENDING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_SUCCEEDED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_FAILED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_CANCELLED: _ClassVar[ExperimentState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_PENDING: _ClassVar[TrialState]
    TRIAL_STATE_DEPLOYING: _ClassVar[TrialState]
    TRIAL_STATE_BENCHMARKING: _ClassVar[TrialState]
    TRIAL_STATE_TEARING_DOWN: _ClassVar[TrialState]
    TRIAL_STATE_SUCCEEDED: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
    TRIAL_STATE_CANCELLED: _ClassVar[TrialState]
    TRIAL_STATE_SKIPPED: _ClassVar[TrialState]

class OnFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_FAILURE_UNSPECIFIED: _ClassVar[OnFailure]
    ON_FAILURE_CONTINUE: _ClassVar[OnFailure]
    ON_FAILURE_ABORT: _ClassVar[OnFailure]
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_PENDING: ExperimentState
EXPERIMENT_STATE_RUNNING: ExperimentState
EXPERIMENT_STATE_SUCCEEDED: ExperimentState
EXPERIMENT_STATE_FAILED: ExperimentState
EXPERIMENT_STATE_CANCELLED: ExperimentState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_PENDING: TrialState
TRIAL_STATE_DEPLOYING: TrialState
TRIAL_STATE_BENCHMARKING: TrialState
TRIAL_STATE_TEARING_DOWN: TrialState
TRIAL_STATE_SUCCEEDED: TrialState
TRIAL_STATE_FAILED: TrialState
TRIAL_STATE_CANCELLED: TrialState
TRIAL_STATE_SKIPPED: TrialState
ON_FAILURE_UNSPECIFIED: OnFailure
ON_FAILURE_CONTINUE: OnFailure
ON_FAILURE_ABORT: OnFailure

class GridAxis(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class ZipGroup(_message.Message):
    __slots__ = ("axes",)
    AXES_FIELD_NUMBER: _ClassVar[int]
    axes: _containers.RepeatedCompositeFieldContainer[GridAxis]
    def __init__(self, axes: _Optional[_Iterable[_Union[GridAxis, _Mapping]]] = ...) -> None: ...

class GridPoint(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ServiceGrid(_message.Message):
    __slots__ = ("name", "recipe", "parameters", "resources", "zip", "exclude")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ZIP_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    recipe: str
    parameters: _containers.RepeatedCompositeFieldContainer[GridAxis]
    resources: _containers.RepeatedCompositeFieldContainer[GridAxis]
    zip: _containers.RepeatedCompositeFieldContainer[ZipGroup]
    exclude: _containers.RepeatedCompositeFieldContainer[GridPoint]
    def __init__(self, name: _Optional[str] = ..., recipe: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[GridAxis, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[GridAxis, _Mapping]]] = ..., zip: _Optional[_Iterable[_Union[ZipGroup, _Mapping]]] = ..., exclude: _Optional[_Iterable[_Union[GridPoint, _Mapping]]] = ...) -> None: ...

class RateLevels(_message.Message):
    __slots__ = ("rates",)
    RATES_FIELD_NUMBER: _ClassVar[int]
    rates: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rates: _Optional[_Iterable[float]] = ...) -> None: ...

class ConcurrencyLevels(_message.Message):
    __slots__ = ("concurrencies",)
    CONCURRENCIES_FIELD_NUMBER: _ClassVar[int]
    concurrencies: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, concurrencies: _Optional[_Iterable[int]] = ...) -> None: ...

class SaturationSweep(_message.Message):
    __slots__ = ("max_concurrency",)
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    max_concurrency: int
    def __init__(self, max_concurrency: _Optional[int] = ...) -> None: ...

class RateSearch(_message.Message):
    __slots__ = ("slo", "start", "min", "max", "tolerance", "max_trials")
    class SloEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SLO_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    slo: _containers.ScalarMap[str, str]
    start: float
    min: float
    max: float
    tolerance: float
    max_trials: int
    def __init__(self, slo: _Optional[_Mapping[str, str]] = ..., start: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., tolerance: _Optional[float] = ..., max_trials: _Optional[int] = ...) -> None: ...

class StudyWorkload(_message.Message):
    __slots__ = ("name", "workload", "parameters", "load", "rates", "concurrencies", "sweep", "search")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCIES_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    name: str
    workload: str
    parameters: _containers.ScalarMap[str, str]
    load: _client_pb2.LoadProfile
    rates: RateLevels
    concurrencies: ConcurrencyLevels
    sweep: SaturationSweep
    search: RateSearch
    def __init__(self, name: _Optional[str] = ..., workload: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., load: _Optional[_Union[_client_pb2.LoadProfile, _Mapping]] = ..., rates: _Optional[_Union[RateLevels, _Mapping]] = ..., concurrencies: _Optional[_Union[ConcurrencyLevels, _Mapping]] = ..., sweep: _Optional[_Union[SaturationSweep, _Mapping]] = ..., search: _Optional[_Union[RateSearch, _Mapping]] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("metric", "minimize")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MINIMIZE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    minimize: bool
    def __init__(self, metric: _Optional[str] = ..., minimize: _Optional[bool] = ...) -> None: ...

class StudyLimits(_message.Message):
    __slots__ = ("parallel_deployments", "deploy_timeout", "trial_timeout", "budget")
    PARALLEL_DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRIAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    parallel_deployments: int
    deploy_timeout: _duration_pb2.Duration
    trial_timeout: _duration_pb2.Duration
    budget: _duration_pb2.Duration
    def __init__(self, parallel_deployments: _Optional[int] = ..., deploy_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., trial_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., budget: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("name", "description", "services", "workloads", "repeats", "seed", "objective", "limits", "on_failure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    services: _containers.RepeatedCompositeFieldContainer[ServiceGrid]
    workloads: _containers.RepeatedCompositeFieldContainer[StudyWorkload]
    repeats: int
    seed: int
    objective: Objective
    limits: StudyLimits
    on_failure: OnFailure
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServiceGrid, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[StudyWorkload, _Mapping]]] = ..., repeats: _Optional[int] = ..., seed: _Optional[int] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., limits: _Optional[_Union[StudyLimits, _Mapping]] = ..., on_failure: _Optional[_Union[OnFailure, str]] = ...) -> None: ...

class Configuration(_message.Message):
    __slots__ = ("index", "grid", "recipe", "parameters", "resources", "key", "service", "failure")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    grid: str
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    resources: _containers.ScalarMap[str, str]
    key: str
    service: str
    failure: str
    def __init__(self, index: _Optional[int] = ..., grid: _Optional[str] = ..., recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Mapping[str, str]] = ..., key: _Optional[str] = ..., service: _Optional[str] = ..., failure: _Optional[str] = ...) -> None: ...

class TrialFigures(_message.Message):
    __slots__ = ("achieved_rate", "ok_rate", "error_ratio", "latency_p50_seconds", "latency_p99_seconds", "slo_met", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ACHIEVED_RATE_FIELD_NUMBER: _ClassVar[int]
    OK_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATIO_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SLO_MET_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    achieved_rate: float
    ok_rate: float
    error_ratio: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    slo_met: bool
    extra: _containers.ScalarMap[str, float]
    def __init__(self, achieved_rate: _Optional[float] = ..., ok_rate: _Optional[float] = ..., error_ratio: _Optional[float] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ..., slo_met: _Optional[bool] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("name", "configuration", "workload", "level_kind", "level", "repeat", "search_step", "state", "state_message", "benchmark", "figures", "start_time", "end_time", "samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    LEVEL_KIND_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    configuration: int
    workload: str
    level_kind: str
    level: float
    repeat: int
    search_step: int
    state: TrialState
    state_message: str
    benchmark: str
    figures: TrialFigures
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    samples: str
    def __init__(self, name: _Optional[str] = ..., configuration: _Optional[int] = ..., workload: _Optional[str] = ..., level_kind: _Optional[str] = ..., level: _Optional[float] = ..., repeat: _Optional[int] = ..., search_step: _Optional[int] = ..., state: _Optional[_Union[TrialState, str]] = ..., state_message: _Optional[str] = ..., benchmark: _Optional[str] = ..., figures: _Optional[_Union[TrialFigures, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., samples: _Optional[str] = ...) -> None: ...

class SearchOutcome(_message.Message):
    __slots__ = ("configuration", "workload", "repeat", "best_rate", "failed_rate", "converged", "reason")
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    BEST_RATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_RATE_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    configuration: int
    workload: str
    repeat: int
    best_rate: float
    failed_rate: float
    converged: bool
    reason: str
    def __init__(self, configuration: _Optional[int] = ..., workload: _Optional[str] = ..., repeat: _Optional[int] = ..., best_rate: _Optional[float] = ..., failed_rate: _Optional[float] = ..., converged: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "state", "state_message", "owner", "study", "configurations", "trials", "searches", "labels", "create_time", "start_time", "end_time", "trace_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STUDY_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATIONS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ExperimentState
    state_message: str
    owner: str
    study: Study
    configurations: _containers.RepeatedCompositeFieldContainer[Configuration]
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    searches: _containers.RepeatedCompositeFieldContainer[SearchOutcome]
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    trace_id: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., state_message: _Optional[str] = ..., owner: _Optional[str] = ..., study: _Optional[_Union[Study, _Mapping]] = ..., configurations: _Optional[_Iterable[_Union[Configuration, _Mapping]]] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., searches: _Optional[_Iterable[_Union[SearchOutcome, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class CreateExperimentRequest(_message.Message):
    __slots__ = ("study", "labels", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STUDY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    study: Study
    labels: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchExperimentResponse(_message.Message):
    __slots__ = ("experiment", "trial", "progress")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    trial: str
    progress: _client_pb2.ProgressSample
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ..., trial: _Optional[str] = ..., progress: _Optional[_Union[_client_pb2.ProgressSample, _Mapping]] = ...) -> None: ...

class CancelExperimentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class GetExperimentReportRequest(_message.Message):
    __slots__ = ("name", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: _client_pb2.ReportFormat
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[_client_pb2.ReportFormat, str]] = ...) -> None: ...

class GetExperimentReportResponse(_message.Message):
    __slots__ = ("format", "content")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    format: _client_pb2.ReportFormat
    content: bytes
    def __init__(self, format: _Optional[_Union[_client_pb2.ReportFormat, str]] = ..., content: _Optional[bytes] = ...) -> None: ...

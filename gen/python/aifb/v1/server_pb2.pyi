import datetime

from aifb.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_STATE_UNSPECIFIED: _ClassVar[ServiceState]
    SERVICE_STATE_PENDING: _ClassVar[ServiceState]
    SERVICE_STATE_STARTING: _ClassVar[ServiceState]
    SERVICE_STATE_READY: _ClassVar[ServiceState]
    SERVICE_STATE_STOPPING: _ClassVar[ServiceState]
    SERVICE_STATE_STOPPED: _ClassVar[ServiceState]
    SERVICE_STATE_FAILED: _ClassVar[ServiceState]
    SERVICE_STATE_DEGRADED: _ClassVar[ServiceState]

class RuntimeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_KIND_UNSPECIFIED: _ClassVar[RuntimeKind]
    RUNTIME_KIND_NATIVE: _ClassVar[RuntimeKind]
    RUNTIME_KIND_APPTAINER: _ClassVar[RuntimeKind]

class RestartPolicyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_POLICY_KIND_UNSPECIFIED: _ClassVar[RestartPolicyKind]
    RESTART_POLICY_KIND_NEVER: _ClassVar[RestartPolicyKind]
    RESTART_POLICY_KIND_ON_FAILURE: _ClassVar[RestartPolicyKind]
    RESTART_POLICY_KIND_ALWAYS: _ClassVar[RestartPolicyKind]

class ServiceEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_EVENT_KIND_UNSPECIFIED: _ClassVar[ServiceEventKind]
    SERVICE_EVENT_KIND_STARTING: _ClassVar[ServiceEventKind]
    SERVICE_EVENT_KIND_READY: _ClassVar[ServiceEventKind]
    SERVICE_EVENT_KIND_EXITED: _ClassVar[ServiceEventKind]
    SERVICE_EVENT_KIND_RESTARTING: _ClassVar[ServiceEventKind]
SERVICE_STATE_UNSPECIFIED: ServiceState
SERVICE_STATE_PENDING: ServiceState
SERVICE_STATE_STARTING: ServiceState
SERVICE_STATE_READY: ServiceState
SERVICE_STATE_STOPPING: ServiceState
SERVICE_STATE_STOPPED: ServiceState
SERVICE_STATE_FAILED: ServiceState
SERVICE_STATE_DEGRADED: ServiceState
RUNTIME_KIND_UNSPECIFIED: RuntimeKind
RUNTIME_KIND_NATIVE: RuntimeKind
RUNTIME_KIND_APPTAINER: RuntimeKind
RESTART_POLICY_KIND_UNSPECIFIED: RestartPolicyKind
RESTART_POLICY_KIND_NEVER: RestartPolicyKind
RESTART_POLICY_KIND_ON_FAILURE: RestartPolicyKind
RESTART_POLICY_KIND_ALWAYS: RestartPolicyKind
SERVICE_EVENT_KIND_UNSPECIFIED: ServiceEventKind
SERVICE_EVENT_KIND_STARTING: ServiceEventKind
SERVICE_EVENT_KIND_READY: ServiceEventKind
SERVICE_EVENT_KIND_EXITED: ServiceEventKind
SERVICE_EVENT_KIND_RESTARTING: ServiceEventKind

class RestartPolicy(_message.Message):
    __slots__ = ("kind", "max_restarts", "backoff", "max_backoff")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    kind: RestartPolicyKind
    max_restarts: int
    backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    def __init__(self, kind: _Optional[_Union[RestartPolicyKind, str]] = ..., max_restarts: _Optional[int] = ..., backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecipeParameter(_message.Message):
    __slots__ = ("name", "type", "description", "default_value", "required", "minimum", "maximum", "pattern", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    description: str
    default_value: str
    required: bool
    minimum: float
    maximum: float
    pattern: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., description: _Optional[str] = ..., default_value: _Optional[str] = ..., required: _Optional[bool] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., pattern: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("name", "description", "runtime", "parameters", "default_resources", "max_resources", "source_yaml", "runnable_here", "not_runnable_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_YAML_FIELD_NUMBER: _ClassVar[int]
    RUNNABLE_HERE_FIELD_NUMBER: _ClassVar[int]
    NOT_RUNNABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    runtime: RuntimeKind
    parameters: _containers.RepeatedCompositeFieldContainer[RecipeParameter]
    default_resources: _common_pb2.Resources
    max_resources: _common_pb2.Resources
    source_yaml: str
    runnable_here: bool
    not_runnable_reason: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., runtime: _Optional[_Union[RuntimeKind, str]] = ..., parameters: _Optional[_Iterable[_Union[RecipeParameter, _Mapping]]] = ..., default_resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., max_resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., source_yaml: _Optional[str] = ..., runnable_here: _Optional[bool] = ..., not_runnable_reason: _Optional[str] = ...) -> None: ...

class SchedulerJob(_message.Message):
    __slots__ = ("scheduler", "job_id", "raw_state", "reason", "exit_code", "signal", "nodes", "stdout_path", "stderr_path")
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    scheduler: str
    job_id: str
    raw_state: str
    reason: str
    exit_code: int
    signal: int
    nodes: str
    stdout_path: str
    stderr_path: str
    def __init__(self, scheduler: _Optional[str] = ..., job_id: _Optional[str] = ..., raw_state: _Optional[str] = ..., reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., nodes: _Optional[str] = ..., stdout_path: _Optional[str] = ..., stderr_path: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "recipe", "parameters", "labels", "state", "owner", "endpoint", "job", "state_message", "resources", "create_time", "update_time", "trace_id", "revision", "metrics", "restart_policy", "restarts", "last_restart_reason", "workers", "replicas", "min_ready", "replica_status", "renew_before")
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
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_READY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATUS_FIELD_NUMBER: _ClassVar[int]
    RENEW_BEFORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    state: ServiceState
    owner: str
    endpoint: _common_pb2.Endpoint
    job: SchedulerJob
    state_message: str
    resources: _common_pb2.Resources
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    trace_id: str
    revision: int
    metrics: MetricsEndpoint
    restart_policy: RestartPolicy
    restarts: int
    last_restart_reason: str
    workers: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    min_ready: int
    replica_status: _containers.RepeatedCompositeFieldContainer[Replica]
    renew_before: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[ServiceState, str]] = ..., owner: _Optional[str] = ..., endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., job: _Optional[_Union[SchedulerJob, _Mapping]] = ..., state_message: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., revision: _Optional[int] = ..., metrics: _Optional[_Union[MetricsEndpoint, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., restarts: _Optional[int] = ..., last_restart_reason: _Optional[str] = ..., workers: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., min_ready: _Optional[int] = ..., replica_status: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., renew_before: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("name", "index", "state", "job", "endpoint", "restarts", "last_restart_reason", "state_message", "workers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    state: ServiceState
    job: SchedulerJob
    endpoint: _common_pb2.Endpoint
    restarts: int
    last_restart_reason: str
    state_message: str
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., state: _Optional[_Union[ServiceState, str]] = ..., job: _Optional[_Union[SchedulerJob, _Mapping]] = ..., endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., restarts: _Optional[int] = ..., last_restart_reason: _Optional[str] = ..., state_message: _Optional[str] = ..., workers: _Optional[_Iterable[str]] = ...) -> None: ...

class ScaleServiceRequest(_message.Message):
    __slots__ = ("name", "replicas", "min_ready")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_READY_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    min_ready: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ..., min_ready: _Optional[int] = ...) -> None: ...

class ScaleServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class MetricsEndpoint(_message.Message):
    __slots__ = ("port", "path", "url")
    PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    port: int
    path: str
    url: str
    def __init__(self, port: _Optional[int] = ..., path: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class ListRecipesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRecipesResponse(_message.Message):
    __slots__ = ("recipes",)
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    recipes: _containers.RepeatedCompositeFieldContainer[Recipe]
    def __init__(self, recipes: _Optional[_Iterable[_Union[Recipe, _Mapping]]] = ...) -> None: ...

class GetRecipeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRecipeResponse(_message.Message):
    __slots__ = ("recipe",)
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    recipe: Recipe
    def __init__(self, recipe: _Optional[_Union[Recipe, _Mapping]] = ...) -> None: ...

class RenderServiceRequest(_message.Message):
    __slots__ = ("recipe", "parameters", "resources", "restart_policy")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    restart_policy: RestartPolicy
    def __init__(self, recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ...) -> None: ...

class RenderServiceResponse(_message.Message):
    __slots__ = ("batch_script", "parameters", "resources")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BATCH_SCRIPT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    batch_script: str
    parameters: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    def __init__(self, batch_script: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ...) -> None: ...

class CreateServiceRequest(_message.Message):
    __slots__ = ("recipe", "parameters", "resources", "labels", "request_id", "restart_policy", "replicas", "min_ready", "renew_before")
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
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_READY_FIELD_NUMBER: _ClassVar[int]
    RENEW_BEFORE_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    labels: _containers.ScalarMap[str, str]
    request_id: str
    restart_policy: RestartPolicy
    replicas: int
    min_ready: int
    renew_before: _duration_pb2.Duration
    def __init__(self, recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., replicas: _Optional[int] = ..., min_ready: _Optional[int] = ..., renew_before: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class WatchServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class WatchServicesRequest(_message.Message):
    __slots__ = ("filter", "include_snapshot")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    filter: str
    include_snapshot: bool
    def __init__(self, filter: _Optional[str] = ..., include_snapshot: _Optional[bool] = ...) -> None: ...

class WatchServicesResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class ReportServiceEventRequest(_message.Message):
    __slots__ = ("name", "kind", "endpoint", "exit_code", "log_tail", "job_id", "message", "startup_duration", "restarts", "workers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: ServiceEventKind
    endpoint: _common_pb2.Endpoint
    exit_code: int
    log_tail: str
    job_id: str
    message: str
    startup_duration: _duration_pb2.Duration
    restarts: int
    workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[ServiceEventKind, str]] = ..., endpoint: _Optional[_Union[_common_pb2.Endpoint, _Mapping]] = ..., exit_code: _Optional[int] = ..., log_tail: _Optional[str] = ..., job_id: _Optional[str] = ..., message: _Optional[str] = ..., startup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., restarts: _Optional[int] = ..., workers: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportServiceEventResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: Service
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ...) -> None: ...

class GetServiceLogsRequest(_message.Message):
    __slots__ = ("name", "tail_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAIL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    tail_bytes: int
    def __init__(self, name: _Optional[str] = ..., tail_bytes: _Optional[int] = ...) -> None: ...

class GetServiceLogsResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "truncated")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    truncated: bool
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

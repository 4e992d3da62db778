import datetime

from aifb.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryMetricsRequest(_message.Message):
    __slots__ = ("labels", "names")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricSample(_message.Message):
    __slots__ = ("name", "labels", "value", "time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    value: float
    time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueryMetricsResponse(_message.Message):
    __slots__ = ("samples", "truncated")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[MetricSample]
    truncated: bool
    def __init__(self, samples: _Optional[_Iterable[_Union[MetricSample, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class PushMetricsRequest(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _telemetry_pb2.MetricBatch
    def __init__(self, batch: _Optional[_Union[_telemetry_pb2.MetricBatch, _Mapping]] = ...) -> None: ...

class PushMetricsResponse(_message.Message):
    __slots__ = ("sequence", "duplicate", "accepted_samples", "rejected_samples", "error_message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    duplicate: bool
    accepted_samples: int
    rejected_samples: int
    error_message: str
    def __init__(self, sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ..., accepted_samples: _Optional[int] = ..., rejected_samples: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class PushLogsRequest(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _telemetry_pb2.LogBatch
    def __init__(self, batch: _Optional[_Union[_telemetry_pb2.LogBatch, _Mapping]] = ...) -> None: ...

class PushLogsResponse(_message.Message):
    __slots__ = ("sequence", "duplicate", "accepted_lines", "rejected_lines", "error_message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_LINES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_LINES_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    duplicate: bool
    accepted_lines: int
    rejected_lines: int
    error_message: str
    def __init__(self, sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ..., accepted_lines: _Optional[int] = ..., rejected_lines: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class QueryLogsRequest(_message.Message):
    __slots__ = ("labels", "start_time", "end_time", "limit", "contains")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    limit: int
    contains: str
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., contains: _Optional[str] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("labels", "time", "line")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    time: _timestamp_pb2.Timestamp
    line: str
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., line: _Optional[str] = ...) -> None: ...

class QueryLogsResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ...) -> None: ...

class GetCollectorStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectorStats(_message.Message):
    __slots__ = ("metric_samples_received", "metric_samples_forwarded", "metric_samples_rejected", "metric_batches_duplicate", "log_lines_received", "log_lines_forwarded", "log_lines_rejected", "log_batches_duplicate", "queue_depth", "spans_received", "agents_last_sequence", "metric_samples_held", "log_lines_held")
    class AgentsLastSequenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METRIC_SAMPLES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    METRIC_SAMPLES_FORWARDED_FIELD_NUMBER: _ClassVar[int]
    METRIC_SAMPLES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    METRIC_BATCHES_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_FORWARDED_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    LOG_BATCHES_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPANS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AGENTS_LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    METRIC_SAMPLES_HELD_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_HELD_FIELD_NUMBER: _ClassVar[int]
    metric_samples_received: int
    metric_samples_forwarded: int
    metric_samples_rejected: int
    metric_batches_duplicate: int
    log_lines_received: int
    log_lines_forwarded: int
    log_lines_rejected: int
    log_batches_duplicate: int
    queue_depth: int
    spans_received: int
    agents_last_sequence: _containers.ScalarMap[str, int]
    metric_samples_held: int
    log_lines_held: int
    def __init__(self, metric_samples_received: _Optional[int] = ..., metric_samples_forwarded: _Optional[int] = ..., metric_samples_rejected: _Optional[int] = ..., metric_batches_duplicate: _Optional[int] = ..., log_lines_received: _Optional[int] = ..., log_lines_forwarded: _Optional[int] = ..., log_lines_rejected: _Optional[int] = ..., log_batches_duplicate: _Optional[int] = ..., queue_depth: _Optional[int] = ..., spans_received: _Optional[int] = ..., agents_last_sequence: _Optional[_Mapping[str, int]] = ..., metric_samples_held: _Optional[int] = ..., log_lines_held: _Optional[int] = ...) -> None: ...

class GetCollectorStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: CollectorStats
    def __init__(self, stats: _Optional[_Union[CollectorStats, _Mapping]] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("trace_id",)
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    def __init__(self, trace_id: _Optional[str] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("trace_id", "span_id", "parent_span_id", "name", "service_name", "start_time", "end_time", "attributes", "status")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service_name: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    status: str
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., name: _Optional[str] = ..., service_name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., status: _Optional[str] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("spans",)
    SPANS_FIELD_NUMBER: _ClassVar[int]
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    def __init__(self, spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ...) -> None: ...

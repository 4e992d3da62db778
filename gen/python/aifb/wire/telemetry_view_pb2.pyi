from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricSeriesView(_message.Message):
    __slots__ = ("name", "labels", "type", "timestamps_ms", "values", "help")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.RepeatedScalarFieldContainer[bytes]
    type: int
    timestamps_ms: _containers.RepeatedScalarFieldContainer[bytes]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    help: str
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Iterable[bytes]] = ..., type: _Optional[int] = ..., timestamps_ms: _Optional[_Iterable[bytes]] = ..., values: _Optional[_Iterable[bytes]] = ..., help: _Optional[str] = ...) -> None: ...

class MetricBatchView(_message.Message):
    __slots__ = ("agent_id", "sequence", "resource", "series")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    sequence: int
    resource: bytes
    series: _containers.RepeatedCompositeFieldContainer[MetricSeriesView]
    def __init__(self, agent_id: _Optional[str] = ..., sequence: _Optional[int] = ..., resource: _Optional[bytes] = ..., series: _Optional[_Iterable[_Union[MetricSeriesView, _Mapping]]] = ...) -> None: ...

class PushMetricsRequestView(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: MetricBatchView
    def __init__(self, batch: _Optional[_Union[MetricBatchView, _Mapping]] = ...) -> None: ...

class TelemetryResourceView(_message.Message):
    __slots__ = ("attributes",)
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogStreamView(_message.Message):
    __slots__ = ("labels", "timestamps_ns", "lines")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_NS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    timestamps_ns: _containers.RepeatedScalarFieldContainer[int]
    lines: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., timestamps_ns: _Optional[_Iterable[int]] = ..., lines: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LogBatchView(_message.Message):
    __slots__ = ("agent_id", "sequence", "resource", "streams")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    sequence: int
    resource: TelemetryResourceView
    streams: _containers.RepeatedCompositeFieldContainer[LogStreamView]
    def __init__(self, agent_id: _Optional[str] = ..., sequence: _Optional[int] = ..., resource: _Optional[_Union[TelemetryResourceView, _Mapping]] = ..., streams: _Optional[_Iterable[_Union[LogStreamView, _Mapping]]] = ...) -> None: ...

class PushLogsRequestView(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: LogBatchView
    def __init__(self, batch: _Optional[_Union[LogBatchView, _Mapping]] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricBatchRaw(_message.Message):
    __slots__ = ("agent_id", "sequence", "resource", "series")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    sequence: int
    resource: bytes
    series: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, agent_id: _Optional[str] = ..., sequence: _Optional[int] = ..., resource: _Optional[bytes] = ..., series: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PushMetricsRequestRaw(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: MetricBatchRaw
    def __init__(self, batch: _Optional[_Union[MetricBatchRaw, _Mapping]] = ...) -> None: ...

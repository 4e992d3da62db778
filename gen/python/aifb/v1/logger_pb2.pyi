import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogSource(_message.Message):
    __slots__ = ("path", "labels", "offset", "size_bytes", "rotations", "truncations")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    path: str
    labels: _containers.ScalarMap[str, str]
    offset: int
    size_bytes: int
    rotations: int
    truncations: int
    def __init__(self, path: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., offset: _Optional[int] = ..., size_bytes: _Optional[int] = ..., rotations: _Optional[int] = ..., truncations: _Optional[int] = ...) -> None: ...

class ListLogSourcesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLogSourcesResponse(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[LogSource]
    def __init__(self, sources: _Optional[_Iterable[_Union[LogSource, _Mapping]]] = ...) -> None: ...

class TailLogsRequest(_message.Message):
    __slots__ = ("labels", "initial_lines", "follow")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    initial_lines: int
    follow: bool
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., initial_lines: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class TailLogsResponse(_message.Message):
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

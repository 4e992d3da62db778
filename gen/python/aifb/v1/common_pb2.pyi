from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(_message.Message):
    __slots__ = ("host", "port", "url")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    url: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., url: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("nodes", "cpus", "memory_mib", "gpus", "time_limit_minutes", "partition", "account")
    NODES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_MINUTES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    nodes: int
    cpus: int
    memory_mib: int
    gpus: int
    time_limit_minutes: int
    partition: str
    account: str
    def __init__(self, nodes: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., gpus: _Optional[int] = ..., time_limit_minutes: _Optional[int] = ..., partition: _Optional[str] = ..., account: _Optional[str] = ...) -> None: ...

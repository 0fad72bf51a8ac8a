from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UserCounters(_message.Message):
    __slots__ = ("user", "admitted", "throttled")
    USER_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    user: str
    admitted: int
    throttled: int
    def __init__(self, user: _Optional[str] = ..., admitted: _Optional[int] = ..., throttled: _Optional[int] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("admitted", "throttled", "users")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    admitted: int
    throttled: int
    users: _containers.RepeatedCompositeFieldContainer[UserCounters]
    def __init__(self, admitted: _Optional[int] = ..., throttled: _Optional[int] = ..., users: _Optional[_Iterable[_Union[UserCounters, _Mapping]]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("text", "repeat")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    repeat: int
    def __init__(self, text: _Optional[str] = ..., repeat: _Optional[int] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: int
    reason: str
    def __init__(self, state: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("text", "outcome", "attempt")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    text: str
    outcome: Outcome
    attempt: int
    def __init__(self, text: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

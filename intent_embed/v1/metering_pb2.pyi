import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageEvent(_message.Message):
    __slots__ = ("event_id", "org_id", "project_id", "model", "tokens", "inputs", "at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    org_id: str
    project_id: str
    model: str
    tokens: int
    inputs: int
    at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., org_id: _Optional[str] = ..., project_id: _Optional[str] = ..., model: _Optional[str] = ..., tokens: _Optional[int] = ..., inputs: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("recorded", "duplicates")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    duplicates: int
    def __init__(self, recorded: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    def __init__(self, api_key: _Optional[str] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("org_id", "org_name", "billing_ok", "billing_state", "project_ids", "key_id", "billing_message")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_NAME_FIELD_NUMBER: _ClassVar[int]
    BILLING_OK_FIELD_NUMBER: _ClassVar[int]
    BILLING_STATE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BILLING_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    org_name: str
    billing_ok: bool
    billing_state: str
    project_ids: _containers.RepeatedScalarFieldContainer[str]
    key_id: str
    billing_message: str
    def __init__(self, org_id: _Optional[str] = ..., org_name: _Optional[str] = ..., billing_ok: _Optional[bool] = ..., billing_state: _Optional[str] = ..., project_ids: _Optional[_Iterable[str]] = ..., key_id: _Optional[str] = ..., billing_message: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("org_id", "project_id", "since")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    project_id: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, org_id: _Optional[str] = ..., project_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageBucket(_message.Message):
    __slots__ = ("day", "project_id", "tokens", "requests")
    DAY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    day: str
    project_id: str
    tokens: int
    requests: int
    def __init__(self, day: _Optional[str] = ..., project_id: _Optional[str] = ..., tokens: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("org_id", "total_tokens", "total_requests", "owed_dollars", "charged_dollars", "pending_dollars", "buckets", "billing_state")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OWED_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    PENDING_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    BILLING_STATE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    total_tokens: int
    total_requests: int
    owed_dollars: int
    charged_dollars: int
    pending_dollars: int
    buckets: _containers.RepeatedCompositeFieldContainer[UsageBucket]
    billing_state: str
    def __init__(self, org_id: _Optional[str] = ..., total_tokens: _Optional[int] = ..., total_requests: _Optional[int] = ..., owed_dollars: _Optional[int] = ..., charged_dollars: _Optional[int] = ..., pending_dollars: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[UsageBucket, _Mapping]]] = ..., billing_state: _Optional[str] = ...) -> None: ...

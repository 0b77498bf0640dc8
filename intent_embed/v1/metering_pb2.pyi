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
    __slots__ = ("org_id", "org_name", "billing_ok", "billing_state", "project_ids", "key_id", "billing_message", "requests_per_minute", "tokens_per_minute")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_NAME_FIELD_NUMBER: _ClassVar[int]
    BILLING_OK_FIELD_NUMBER: _ClassVar[int]
    BILLING_STATE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BILLING_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    org_name: str
    billing_ok: bool
    billing_state: str
    project_ids: _containers.RepeatedScalarFieldContainer[str]
    key_id: str
    billing_message: str
    requests_per_minute: int
    tokens_per_minute: int
    def __init__(self, org_id: _Optional[str] = ..., org_name: _Optional[str] = ..., billing_ok: _Optional[bool] = ..., billing_state: _Optional[str] = ..., project_ids: _Optional[_Iterable[str]] = ..., key_id: _Optional[str] = ..., billing_message: _Optional[str] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("org_id", "project_id", "since", "start_date", "end_date")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    project_id: str
    since: _timestamp_pb2.Timestamp
    start_date: str
    end_date: str
    def __init__(self, org_id: _Optional[str] = ..., project_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ...) -> None: ...

class UsageBucket(_message.Message):
    __slots__ = ("day", "project_id", "tokens", "requests", "cost_nanodollars")
    DAY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_NANODOLLARS_FIELD_NUMBER: _ClassVar[int]
    day: str
    project_id: str
    tokens: int
    requests: int
    cost_nanodollars: int
    def __init__(self, day: _Optional[str] = ..., project_id: _Optional[str] = ..., tokens: _Optional[int] = ..., requests: _Optional[int] = ..., cost_nanodollars: _Optional[int] = ...) -> None: ...

class DayUsage(_message.Message):
    __slots__ = ("day", "tokens", "requests", "cost_nanodollars")
    DAY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_NANODOLLARS_FIELD_NUMBER: _ClassVar[int]
    day: str
    tokens: int
    requests: int
    cost_nanodollars: int
    def __init__(self, day: _Optional[str] = ..., tokens: _Optional[int] = ..., requests: _Optional[int] = ..., cost_nanodollars: _Optional[int] = ...) -> None: ...

class ProjectUsage(_message.Message):
    __slots__ = ("project_id", "name", "tokens", "requests", "cost_nanodollars")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_NANODOLLARS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    name: str
    tokens: int
    requests: int
    cost_nanodollars: int
    def __init__(self, project_id: _Optional[str] = ..., name: _Optional[str] = ..., tokens: _Optional[int] = ..., requests: _Optional[int] = ..., cost_nanodollars: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("org_id", "total_tokens", "total_requests", "owed_dollars", "charged_dollars", "pending_dollars", "buckets", "billing_state", "days", "projects", "total_cost_nanodollars", "billing_ok", "billing_message", "has_payment_method", "org_name")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OWED_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    PENDING_DOLLARS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    BILLING_STATE_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_NANODOLLARS_FIELD_NUMBER: _ClassVar[int]
    BILLING_OK_FIELD_NUMBER: _ClassVar[int]
    BILLING_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    ORG_NAME_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    total_tokens: int
    total_requests: int
    owed_dollars: int
    charged_dollars: int
    pending_dollars: int
    buckets: _containers.RepeatedCompositeFieldContainer[UsageBucket]
    billing_state: str
    days: _containers.RepeatedCompositeFieldContainer[DayUsage]
    projects: _containers.RepeatedCompositeFieldContainer[ProjectUsage]
    total_cost_nanodollars: int
    billing_ok: bool
    billing_message: str
    has_payment_method: bool
    org_name: str
    def __init__(self, org_id: _Optional[str] = ..., total_tokens: _Optional[int] = ..., total_requests: _Optional[int] = ..., owed_dollars: _Optional[int] = ..., charged_dollars: _Optional[int] = ..., pending_dollars: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[UsageBucket, _Mapping]]] = ..., billing_state: _Optional[str] = ..., days: _Optional[_Iterable[_Union[DayUsage, _Mapping]]] = ..., projects: _Optional[_Iterable[_Union[ProjectUsage, _Mapping]]] = ..., total_cost_nanodollars: _Optional[int] = ..., billing_ok: _Optional[bool] = ..., billing_message: _Optional[str] = ..., has_payment_method: _Optional[bool] = ..., org_name: _Optional[str] = ...) -> None: ...

class CreateBillingSetupRequest(_message.Message):
    __slots__ = ("org_id", "return_url")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_URL_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    return_url: str
    def __init__(self, org_id: _Optional[str] = ..., return_url: _Optional[str] = ...) -> None: ...

class CreateBillingSetupResponse(_message.Message):
    __slots__ = ("url", "kind", "customer_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    kind: str
    customer_id: str
    def __init__(self, url: _Optional[str] = ..., kind: _Optional[str] = ..., customer_id: _Optional[str] = ...) -> None: ...

class ApplyStripeEventRequest(_message.Message):
    __slots__ = ("payload", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: str
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[str] = ...) -> None: ...

class ApplyStripeEventResponse(_message.Message):
    __slots__ = ("event_id", "type", "duplicate", "outcome", "org_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    duplicate: bool
    outcome: str
    org_id: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., duplicate: _Optional[bool] = ..., outcome: _Optional[str] = ..., org_id: _Optional[str] = ...) -> None: ...

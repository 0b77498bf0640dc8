"""gRPC rich error details, written by the services and read by their clients.

A failed call carries, next to its code and message, a ``google.rpc.BadRequest`` naming the
request field to fix and a ``google.rpc.ErrorInfo`` whose reason is a word a client may branch
on (``BILLING_NOT_ACTIVE``, ``UNKNOWN_ORG``), in the ``grpc-status-details-bin`` trailer that
grpcio-status reads and writes. Clients act on these, never on the wording of the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# ErrorInfo.domain of every reason this project sends.
ERROR_DOMAIN = "intent-embed"
# Reasons a client may branch on.
BILLING_NOT_ACTIVE = "BILLING_NOT_ACTIVE"
UNKNOWN_ORG = "UNKNOWN_ORG"
# Self-service billing: Stripe is not set up on this deployment, or did not answer, or so many
# calls already wait on it that this one was refused without trying; a webhook failed
# verification.
STRIPE_NOT_CONFIGURED = "STRIPE_NOT_CONFIGURED"
STRIPE_UNAVAILABLE = "STRIPE_UNAVAILABLE"
STRIPE_BUSY = "STRIPE_BUSY"
BAD_SIGNATURE = "BAD_SIGNATURE"
# The server is shutting down: retry, another replica (or this one's successor) answers.
DRAINING = "DRAINING"


@dataclass(frozen=True)
class Details:
    """What a failed call's rich status says: the field to fix and the reason, if given."""

    field: str = ""
    reason: str = ""


def status_with_details(
    code: grpc.StatusCode, message: str, *, field: str = "", reason: str = ""
) -> grpc.Status:
    """A status for `abort_with_status`, with BadRequest (`field`) and ErrorInfo (`reason`)."""
    details = []
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if reason:
        details.append(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    # grpc.StatusCode's value is (number, name); google.rpc.Status wants the number.
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return rpc_status.to_status(status)


def details_of(err: grpc.aio.AioRpcError) -> Details:
    """The field and reason a failed call's status carries (empty when it has none)."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:  # a trailer that does not match the call's code and message
        return Details()
    if status is None:
        return Details()
    field = reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations:
                field = bad_request.field_violations[0].field
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return Details(field=field, reason=reason)

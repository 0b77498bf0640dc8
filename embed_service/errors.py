"""Every failure the embedding service answers with, and its gRPC status code, in one place.

Code raises one of these; the servicer turns it into a status with `abort`, its `field` and
`reason` into the status's rich details (:mod:`intent_embed.rich_status`). Messages are for a
person: they name the input index and say how to fix the request.
"""

from __future__ import annotations

import grpc


class EmbedError(Exception):
    """A failure with the status code the client gets."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the request field to fix (google.rpc.BadRequest)
        self.reason = reason  # a word clients may branch on (google.rpc.ErrorInfo)


class InvalidInput(EmbedError):
    """The request itself is wrong; retrying it unchanged fails again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(EmbedError):
    """The queue is full; the client should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(EmbedError):
    """Not ready, shutting down, or metering cannot be reached: retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE


class UsageRejected(EmbedError):
    """Metering refused the usage event (unknown org, malformed event): no answer without it."""

    code = grpc.StatusCode.FAILED_PRECONDITION

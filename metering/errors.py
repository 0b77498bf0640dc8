"""The errors metering's operations report to their callers; each message says what to fix.

The gRPC servicer maps them to status codes in one table (:mod:`metering.server`), the admin
CLI prints them.
"""

from __future__ import annotations

from intent_embed.rich_status import (
    BAD_SIGNATURE,
    STRIPE_BUSY,
    STRIPE_NOT_CONFIGURED,
    STRIPE_UNAVAILABLE,
    UNKNOWN_ORG,
)


class LedgerError(Exception):
    """Base of the errors the ledger reports to callers (message says what to fix)."""

    # The google.rpc.ErrorInfo reason sent with the gRPC status ("" sends none).
    reason = ""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field  # the request field to fix, when one is to blame


class InvalidUsage(LedgerError):
    """A malformed usage event (gRPC INVALID_ARGUMENT)."""


class UnknownOrg(LedgerError):
    """Usage for an org or project the ledger does not know (gRPC FAILED_PRECONDITION)."""

    reason = UNKNOWN_ORG


class NotFound(LedgerError):
    """An admin or query operation named an id that does not exist."""


class Unauthenticated(LedgerError):
    """Unknown, malformed or revoked API key."""


class StripeNotConfigured(LedgerError):
    """Self-service billing asked for, but Stripe's key or webhook secret is not set
    (gRPC FAILED_PRECONDITION)."""

    reason = STRIPE_NOT_CONFIGURED


class BadSignature(LedgerError):
    """A webhook delivery whose Stripe-Signature does not verify, or whose body is not a Stripe
    event (gRPC INVALID_ARGUMENT); nothing was changed."""

    reason = BAD_SIGNATURE


class StripeUnavailable(LedgerError):
    """Stripe did not answer a call self-service billing needs; retrying later may work (gRPC
    UNAVAILABLE)."""

    reason = STRIPE_UNAVAILABLE


class StripeBusy(LedgerError):
    """Every place for a call that waits on Stripe is taken (:mod:`metering.stripe_pool`): the
    call was refused without trying, so retrying shortly may work (gRPC UNAVAILABLE)."""

    reason = STRIPE_BUSY

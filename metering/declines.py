"""Which card declines may be retried: hard ones wait for a new payment method, soft ones are
retried with backoff.

Stripe's error carries ``code`` (``card_declined``, ``expired_card``, ...), the issuer's reason
as ``decline_code`` and, for issuer declines, Stripe's own ``advice_code``. The advice wins
when present (``do_not_try_again`` and ``confirm_card_data``: the customer must act;
``try_again_later``: retry). Otherwise a decline is hard when Stripe's decline-code table says
the next step is the customer's (another card, new card details, authentication) or the
issuer will never approve it (the card networks' "do not reattempt" categories: lost, stolen,
pick up, fraud, revoked authorisations). Everything else is soft, including
``do_not_honor``, ``generic_decline``, ``call_issuer`` and unknown codes: issuers use them for
temporary refusals too, the card networks allow reattempts for them, and the retry cap
(:mod:`metering.settlement`) bounds the cost of being wrong.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["hard", "soft"]

HARD_DECLINES = frozenset({
    # The issuer will never approve this card: never reattempt (card-network rules).
    "lost_card", "stolen_card", "pickup_card", "fraudulent", "merchant_blacklist",
    "restricted_card", "security_violation", "revocation_of_authorization",
    "revocation_of_all_authorizations", "stop_payment_order", "do_not_try_again",
    # The card or its details are no longer valid: only the customer can fix them.
    "expired_card", "incorrect_number", "invalid_number", "invalid_account",
    "invalid_expiry_month", "invalid_expiry_year", "incorrect_cvc", "invalid_cvc",
    "incorrect_zip", "new_account_information_available",
    # This card cannot pay us at all, however often we ask.
    "card_not_supported", "currency_not_supported", "transaction_not_allowed",
    "not_permitted", "service_not_allowed", "testmode_decline", "live_mode_test_card",
    # Off-session: the customer has to authenticate (3-D Secure) themselves.
    "authentication_required", "offline_pin_required", "online_or_offline_pin_required",
})  # fmt: skip

HARD_ADVICE = frozenset({"do_not_try_again", "confirm_card_data"})
SOFT_ADVICE = frozenset({"try_again_later"})


def decline_kind(code: str | None, decline_code: str | None, advice_code: str | None) -> Kind:
    """Hard (wait for a new payment method) or soft (retry later) for one card error."""
    if advice_code in HARD_ADVICE:
        return "hard"
    if advice_code in SOFT_ADVICE:
        return "soft"
    if (decline_code or "") in HARD_DECLINES or (code or "") in HARD_DECLINES:
        return "hard"
    return "soft"

"""The price: 94 cents per 1,000,000 tokens, charged in whole dollars.

Always computed from an org's cumulative integer tokens, never as a sum of rounded
per-request costs, so charges equal the floor of the exact cumulative cost.
"""

from __future__ import annotations

CENTS_PER_MILLION_TOKENS = 94
# owed_dollars = tokens * 94 cents / 1e6 tokens / 100 cents per dollar, floored.
_DENOMINATOR = 1_000_000 * 100


def owed_dollars(total_tokens: int) -> int:
    """Whole dollars owed for `total_tokens` cumulative tokens (floor of the exact cost)."""
    return total_tokens * CENTS_PER_MILLION_TOKENS // _DENOMINATOR

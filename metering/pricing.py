"""The price: 94 cents per 1,000,000 tokens, charged in whole dollars, shown exactly in
nano-dollars.

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


# The exact cost of one token in nano-dollars: 94 cents (94 * 10**7 nano-dollars) per 10**6
# tokens is 940. Costs of any number of tokens are exact integers in this unit, so per-day and
# per-project costs add up to the total without rounding.
NANODOLLARS_PER_TOKEN = CENTS_PER_MILLION_TOKENS * 10**7 // 10**6


def cost_nanodollars(tokens: int) -> int:
    """The exact cost of `tokens` in nano-dollars (10**-9 USD); whole dollars owed are
    `owed_dollars` of the cumulative tokens, never a sum of these."""
    return tokens * NANODOLLARS_PER_TOKEN

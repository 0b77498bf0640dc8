"""When an org is charged: the one place that decides how many whole dollars to charge now.

Card fees are $0.30 + 2.9% per charge and issuers read a stream of $1 charges as card
testing, so an org is charged at most once per billing period (a calendar month in UTC by
default) unless what it owes reaches a threshold:

- *threshold*: the uncharged whole dollars reach ``threshold_dollars`` (default $20): all of
  them are charged at once, whenever a billing run sees it;
- *period end*: dollars owed for usage of a period that has ended are not covered yet and no
  charge (pending or succeeded) was made since the current period began: all uncharged whole
  dollars are charged (at least $1).

Cents below a dollar always carry over: owed dollars are the floor of the cumulative cost
(:func:`metering.pricing.owed_dollars`). The policy is pure; the billing worker
(:mod:`metering.billing`) gathers the facts under its row lock and passes its clock's time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Period = Literal["month", "week", "day"]
PERIODS: tuple[Period, ...] = ("month", "week", "day")
# The billing worker's clock; tests inject a simulated one. Always timezone-aware UTC.
Clock = Callable[[], dt.datetime]


def period_start(now: dt.datetime, period: Period) -> dt.datetime:
    """The UTC start of the period `now` falls in (months and ISO weeks start at 00:00 UTC)."""
    day = now.astimezone(dt.UTC).date()
    if period == "month":
        day = day.replace(day=1)
    elif period == "week":
        day -= dt.timedelta(days=day.weekday())
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


@dataclass(frozen=True)
class OrgDollars:
    """What the policy needs to know about one org, in whole dollars."""

    uncharged: int  # owed minus what succeeded and pending charges cover
    # Owed for usage before the current period began, minus what charges cover (may be < 0).
    closed_uncharged: int
    charged_this_period: bool  # a pending or succeeded charge was created in this period


@dataclass(frozen=True)
class ChargePolicy:
    threshold_dollars: int = 20
    period: Period = "month"

    def period_start(self, now: dt.datetime) -> dt.datetime:
        return period_start(now, self.period)

    def dollars_to_charge(self, org: OrgDollars) -> int:
        """Whole dollars to charge now (0: wait). Never more than what is uncharged."""
        if org.uncharged <= 0:
            return 0
        if org.uncharged >= self.threshold_dollars:
            return org.uncharged
        if org.closed_uncharged > 0 and not org.charged_this_period:
            return org.uncharged
        return 0

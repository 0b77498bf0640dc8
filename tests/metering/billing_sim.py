"""The billing simulation: orgs spending steadily for 62 days from 2026-01-01 (UTC), billing
runs at a fixed cadence, every charge paid. `model_charges` is the charge policy alone, applied
to cumulative tokens the way the billing worker applies it; `fee_share` and `table` turn
charges into what `docs/billing.md` shows (card fees of $0.30 + 2.9% per charge)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

from metering.charge_policy import ChargePolicy, OrgDollars
from metering.pricing import owed_dollars

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAYS = 62
# Spend per day, in cents: $0.10, $3, $100 and $5,000.
SPENDS = (10, 300, 10_000, 500_000)
MONTHS = ((2026, 1), (2026, 2))  # the whole months of the 62 days
TODAY = ChargePolicy(threshold_dollars=1)  # before: every whole dollar as soon as owed
DEFAULT = ChargePolicy()  # after: $20 threshold, else at the end of the month

Charge = tuple[dt.datetime, int]  # (run time, whole dollars)


def tokens_at(cents_per_day: int, at: dt.datetime) -> int:
    """Cumulative tokens of an org spending `cents_per_day` steadily since START."""
    seconds = max(0, int((at - START).total_seconds()))
    return cents_per_day * seconds * 1_000_000 // (94 * 86_400)


def run_times(step: dt.timedelta) -> Iterator[dt.datetime]:
    """The billing runs: one every `step` after START, through the 62nd day's end."""
    at = START + step
    while at <= START + dt.timedelta(days=DAYS):
        yield at
        at += step


def model_charges(cents_per_day: int, policy: ChargePolicy, step: dt.timedelta) -> list[Charge]:
    """The charges the policy makes for one org when every charge succeeds."""
    charges: list[Charge] = []
    charged, last = 0, START - dt.timedelta(days=1)
    for at in run_times(step):
        owed = owed_dollars(tokens_at(cents_per_day, at))
        start = policy.period_start(at)
        closed = owed_dollars(tokens_at(cents_per_day, start))
        k = policy.dollars_to_charge(OrgDollars(owed - charged, closed - charged, last >= start))
        if k > 0:
            charges.append((at, k))
            charged, last = charged + k, at
    return charges


def month_of(at: dt.datetime) -> tuple[int, int]:
    """The month a run bills: a run at 00:00 on the 1st closes the month before."""
    before = at - dt.timedelta(microseconds=1)
    return before.year, before.month


def fee_share(amounts: Sequence[int]) -> Fraction:
    """Card fees ($0.30 + 2.9% per charge) as a share of the dollars charged."""
    fees = sum((Fraction(30, 100) + Fraction(29, 1000) * a for a in amounts), Fraction(0))
    return fees / Fraction(sum(amounts)) if amounts else Fraction(0)


@dataclass(frozen=True)
class Row:
    cents_per_day: int
    before: list[Charge]
    after: list[Charge]

    @staticmethod
    def in_months(charges: list[Charge]) -> list[int]:
        return [a for at, a in charges if month_of(at) in MONTHS]

    def render(self) -> str:
        def cells(charges: list[Charge]) -> str:
            per_month = [sum(1 for at, _ in charges if month_of(at) == m) for m in MONTHS]
            share = fee_share(self.in_months(charges))
            return f"{per_month[0]} / {per_month[1]} | {float(share) * 100:.1f}%"

        spend = f"${self.cents_per_day // 100:,}" if self.cents_per_day >= 100 else "$0.10"
        return f"| {spend} | {cells(self.before)} | {cells(self.after)} |"


def table(step: dt.timedelta) -> str:
    """The markdown table of docs/billing.md, for billing runs every `step`."""
    lines = [
        "| spend per day | before: charges Jan / Feb | before: fees | "
        "after: charges Jan / Feb | after: fees |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for cents in SPENDS:
        row = Row(cents, model_charges(cents, TODAY, step), model_charges(cents, DEFAULT, step))
        lines.append(row.render())
    return "\n".join(lines)

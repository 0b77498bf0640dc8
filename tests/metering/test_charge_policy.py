"""When orgs are charged: at most once a month below the $20 threshold, at once above it,
cents carried over; several replicas still make one charge; and the simulation of orgs
spending $0.10 to $5,000 a day for 62 days, through the billing worker, the real SDK and the
fake Stripe on a simulated clock, whose numbers are the table in docs/billing.md."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from pathlib import Path

import pytest
from sqlmodel import Session

from metering.charge_policy import ChargePolicy, OrgDollars, Period, period_start
from metering.database import make_engine
from metering.ledger import Ledger
from metering.pricing import owed_dollars
from metering.standing import charged_dollars
from metering.usage import Event
from tests.fakes.fake_stripe import FakeStripe
from tests.metering.billing_sim import (
    DEFAULT,
    MONTHS,
    SPENDS,
    START,
    model_charges,
    month_of,
    run_times,
    table,
    tokens_at,
)
from tests.metering.harness import SimClock, use, worker

DOC = Path(__file__).resolve().parents[2] / "docs" / "billing.md"
SERVICE_CADENCE = dt.timedelta(seconds=300)  # METERING_BILL_INTERVAL_S
SIM_CADENCE = dt.timedelta(hours=6)  # through the database and Stripe: months in seconds
TOKENS_PER_DOLLAR = 100_000_000 // 94 + 1  # just over $1 of tokens


def charges_of(ledger: Ledger, org: str) -> list[tuple[dt.datetime, int]]:
    return [(c.created_at, c.amount_cents // 100) for c in ledger.list_charges(org)]


@pytest.mark.parametrize(
    ("period", "now", "start"),
    [
        ("month", dt.datetime(2026, 2, 28, 23, 59, tzinfo=dt.UTC), dt.datetime(2026, 2, 1)),
        ("week", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC), dt.datetime(2026, 2, 23)),
        ("day", dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC), dt.datetime(2026, 3, 1)),
    ],
)
def test_periods_start_at_midnight_utc(
    period: Period, now: dt.datetime, start: dt.datetime
) -> None:
    assert period_start(now, period) == start.replace(tzinfo=dt.UTC)
    local = now.astimezone(dt.timezone(dt.timedelta(hours=5)))  # e.g. the 1st, 04:59 at UTC+5
    assert period_start(local, period) == start.replace(tzinfo=dt.UTC)


def test_the_policy_never_charges_more_than_is_uncharged() -> None:
    for uncharged, closed, this_period in itertools.product(range(-2, 45), range(-2, 45), (0, 1)):
        dollars = OrgDollars(uncharged, min(closed, uncharged), bool(this_period))
        k = DEFAULT.dollars_to_charge(dollars)
        assert k in (0, uncharged) and (k == 0 or uncharged >= 1)
        if this_period and uncharged < DEFAULT.threshold_dollars:
            assert k == 0  # one charge a period below the threshold


def test_a_small_debt_waits_for_the_month_end_and_cents_carry_over(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(dt.datetime(2026, 1, 15, 12, tzinfo=dt.UTC))
    org = ledger.create_org("small", "cus_small").id
    bill = worker(ledger, fake, clock=clock, threshold=20)
    use(ledger, org, 5 * TOKENS_PER_DOLLAR + 500_000, at=clock.now)  # $5.47
    for _ in range(16):  # daily runs to the end of January: nothing
        bill.run_once()
        clock.advance(days=1)
    assert fake.posts() == []
    clock.now = dt.datetime(2026, 2, 1, 0, 5, tzinfo=dt.UTC)
    assert bill.run_once().succeeded == [f"{org}-1"]
    use(ledger, org, 3 * TOKENS_PER_DOLLAR, at=clock.now)  # $8.29 in all
    bill.run_once()
    clock.advance(days=20)
    bill.run_once()  # February: January's $5 is paid, nothing more this month
    clock.now = dt.datetime(2026, 3, 1, 0, 5, tzinfo=dt.UTC)
    bill.run_once()
    assert [pi["amount"] for pi in fake.intents_for("cus_small")] == [500, 300]
    assert ledger.usage(org).owed_dollars == 8 == ledger.usage(org).charged_dollars


def test_a_debt_reaching_the_threshold_is_charged_at_once(ledger: Ledger, fake: FakeStripe) -> None:
    clock = SimClock(dt.datetime(2026, 1, 10, tzinfo=dt.UTC))
    org = ledger.create_org("big", "cus_big").id
    bill = worker(ledger, fake, clock=clock, threshold=20)
    use(ledger, org, 19 * TOKENS_PER_DOLLAR, at=clock.now)
    assert bill.run_once().created == []
    use(ledger, org, 2 * TOKENS_PER_DOLLAR, at=clock.now)  # $21
    assert bill.run_once().succeeded == [f"{org}-1"]
    use(ledger, org, 5 * TOKENS_PER_DOLLAR, at=clock.now)  # $5 more: waits for February
    clock.advance(days=5)
    assert bill.run_once().created == []
    assert [pi["amount"] for pi in fake.intents_for("cus_big")] == [2100]


def _replicas_at_month_end(ledger: Ledger, fake: FakeStripe) -> None:
    fake.delay_s = 0.05
    at = dt.datetime(2026, 1, 20, tzinfo=dt.UTC)
    orgs = [ledger.create_org(f"o{i}", f"cus_{i}").id for i in range(6)]
    for org in orgs:
        use(ledger, org, 7 * TOKENS_PER_DOLLAR, at=at)
    clock = SimClock(dt.datetime(2026, 2, 1, 0, 1, tzinfo=dt.UTC))
    barrier = threading.Barrier(3)

    def replica() -> None:
        barrier.wait()
        worker(ledger, fake, clock=clock, threshold=20).run_once()

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, org in enumerate(orgs):
        assert [pi["amount"] for pi in fake.intents_for(f"cus_{i}")] == [700]
        assert [c.state for c in ledger.list_charges(org)] == ["succeeded"]


def test_replicas_at_the_month_end_make_one_charge_per_org(
    ledger: Ledger, fake: FakeStripe
) -> None:
    _replicas_at_month_end(ledger, fake)


def _simulate(ledger: Ledger, fake: FakeStripe) -> dict[int, str]:
    """62 days of the four orgs' usage, a billing run every SIM_CADENCE; checks owed and
    charged after every run. The org of each spend."""
    orgs = {cents: ledger.create_org(f"spend{cents}", f"cus_{cents}").id for cents in SPENDS}
    clock = SimClock(START)
    bill = worker(ledger, fake, clock=clock, threshold=20)
    before, ids = START, itertools.count()
    for at in run_times(SIM_CADENCE):
        events = [
            Event(f"sim{next(ids)}", org, "", "intent-embed", used, 1, before + SIM_CADENCE / 2)
            for cents, org in orgs.items()
            if (used := tokens_at(cents, at) - tokens_at(cents, before))
        ]
        ledger.record_calls([events])
        clock.now = before = at
        bill.run_once()
        with Session(ledger.engine) as session:
            for cents, org in orgs.items():
                owed = owed_dollars(tokens_at(cents, at))
                charged = charged_dollars(session, org)
                assert charged <= owed  # never more than owed
                if at == DEFAULT.period_start(at):  # a month's end: all whole dollars charged
                    assert charged == owed
    return orgs


def test_simulation_through_the_worker_and_stripe(sqlite_url: str, fake: FakeStripe) -> None:
    engine = make_engine(sqlite_url)
    ledger = Ledger(engine)
    orgs = _simulate(ledger, fake)
    for cents, org in orgs.items():
        # The worker made exactly the charges the policy says, at the runs it says.
        charges = charges_of(ledger, org)
        assert charges == model_charges(cents, DEFAULT, SIM_CADENCE)
        paid = [pi["amount"] // 100 for pi in fake.intents_for(f"cus_{cents}")]
        assert paid == [k for _, k in charges]
        # Never more than one charge a month below the threshold.
        for month in MONTHS:
            small = [k for at, k in charges if month_of(at) == month and k < 20]
            assert len(small) <= 1
    engine.dispose()


def test_the_doc_shows_the_policy_at_the_service_cadence() -> None:
    for cadence in (SERVICE_CADENCE, SIM_CADENCE):
        rendered = table(cadence)
        assert rendered in DOC.read_text(), f"docs/billing.md is out of date:\n{rendered}"
    # The 6-hour table's "after" column is the worker's own (the simulation test above).
    for cents in SPENDS:
        charges = model_charges(cents, DEFAULT, SERVICE_CADENCE)
        for month in MONTHS:
            amounts = [k for at, k in charges if month_of(at) == month]
            # Fees at most 5% of revenue for every org owing at least $10 a month.
            fees = sum(0.30 + 0.029 * k for k in amounts)
            assert sum(amounts) < 10 or fees <= 0.05 * sum(amounts)
            # At most one charge below the threshold a month (the month-end one).
            assert sum(1 for k in amounts if k < DEFAULT.threshold_dollars) <= 1


@pytest.mark.postgres
def test_replicas_at_the_month_end_on_postgres(pg_url: str, fake: FakeStripe) -> None:
    engine = make_engine(pg_url)
    _replicas_at_month_end(Ledger(engine), fake)
    assert len(fake.posts()) == 6  # row locks kept the replicas apart, not replays
    engine.dispose()


def test_policy_from_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from metering.billing import config_from
    from metering.settings import Settings

    monkeypatch.setenv("METERING_CHARGE_THRESHOLD_DOLLARS", "50")
    monkeypatch.setenv("METERING_CHARGE_PERIOD", "week")
    policy = config_from(Settings(**{})).policy
    assert policy == ChargePolicy(threshold_dollars=50, period="week")

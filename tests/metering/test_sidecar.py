"""The metering sidecar as a real process, against a small fake central MeteringService.

The fake central stores events by id (a duplicate is counted, not stored again) and can be
stopped and restarted on the same port, slowed down, or told to reject an org. The sidecar is
started with ``python -m metering sidecar`` and killed with real signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from devstack.probes import NotReady, free_port, grpc_serving, wait_serving
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.ledger import Ledger
from metering.server import Metrics, start_server
from metering.settings import Settings
from tests.support.clinc150 import REPO_ROOT
from tests.support.fake_metering import METERING_SERVICE, FakeMetering, FakeServer
from tests.support.metrics import scraped_value
from tests.support.waiting import eventually, eventually_equal


def event(event_id: str, tokens: int = 7, org: str = "org-1") -> metering_pb2.UsageEvent:
    return metering_pb2.UsageEvent(
        event_id=event_id, org_id=org, model="intent-embed", tokens=tokens, inputs=1
    )


# -- fake central ------------------------------------------------------------------------


class Central:
    """A fake central metering (atomic per call, idempotent by event id, like the real ledger)
    that tests stop and start again on the same port, slow down, or tell to reject an org."""

    def __init__(self) -> None:
        self.ledger = FakeMetering()
        self.server = FakeServer.metering(self.ledger, port=free_port())
        self.port = self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()


@pytest.fixture
async def central() -> AsyncIterator[Central]:
    fake = Central()
    await fake.start()
    yield fake
    await fake.stop()


# -- the sidecar process -----------------------------------------------------------------


def sidecar_command() -> list[str]:
    return [sys.executable, "-m", "metering", "sidecar"]


class SidecarProcess:
    def __init__(self, tmp_path: Path, central_port: int, **options: object) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.spool_path = tmp_path / "spool.db"
        self.log_path = tmp_path / "sidecar.log"
        self.options: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "metrics_host": "127.0.0.1",
            "metrics_port": self.metrics_port,
            "spool_path": self.spool_path,
            "central_addr": f"127.0.0.1:{central_port}",
            "forward_interval_s": 0.1,
            "forward_backoff_max_s": 0.4,
            "forward_timeout_s": 2,
            "insecure_no_auth": True,  # the tests of service tokens set them
            **options,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in self.options.items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
        self.process = await asyncio.to_thread(self._spawn, args, env)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            await asyncio.to_thread(
                wait_serving, f"127.0.0.1:{self.port}", self.process, 30, METERING_SERVICE
            )
        except NotReady as exc:
            raise AssertionError(f"sidecar: {exc}:\n{self.log_path.read_text()}") from None

    def _spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [*sidecar_command(), *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
            )

    @property
    def stub(self) -> metering_pb2_grpc.MeteringServiceStub:
        assert self.channel is not None
        return metering_pb2_grpc.MeteringServiceStub(self.channel)

    async def record(self, *events: metering_pb2.UsageEvent) -> metering_pb2.RecordUsageResponse:
        request = metering_pb2.RecordUsageRequest(events=list(events))
        reply: metering_pb2.RecordUsageResponse = await self.stub.RecordUsage(request, timeout=5)
        return reply

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return await asyncio.to_thread(scraped_value, url, name, labels)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, within_s: float) -> int:
        assert self.process is not None
        code = await asyncio.to_thread(self.process.wait, within_s)
        await self.close_channel()
        return code

    async def close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def stop(self) -> None:
        await self.close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
async def sidecars(tmp_path: Path) -> AsyncIterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def make(central_port: int, **options: object) -> SidecarProcess:
        sidecar = SidecarProcess(tmp_path, central_port, **options)
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        await sidecar.stop()


async def metric_reaches(
    sidecar: SidecarProcess, name: str, value: float, within_s: float = 10.0
) -> None:
    await eventually_equal(lambda: sidecar.metric(name), value, within_s, name)


# -- tests -------------------------------------------------------------------------------


async def test_acks_continue_while_central_is_down_and_everything_arrives_later(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecars(central.port)
    await sidecar.start()
    for i in range(5):
        assert (await sidecar.record(event(f"up-{i}"))).recorded == 1
    await eventually(lambda: len(central.ledger.events) == 5)

    await central.stop()
    for i in range(30):
        reply = await sidecar.record(event(f"down-{i}", tokens=i + 1))
        assert (reply.recorded, reply.duplicates) == (1, 0)
    assert await sidecar.metric("metering_sidecar_spool_depth") == 30
    await asyncio.sleep(0.3)
    assert await sidecar.metric("metering_sidecar_oldest_unforwarded_age_seconds") > 0.2
    errors = await sidecar.metric("metering_sidecar_forward_errors_total", {"code": "UNAVAILABLE"})
    # Retries back off: 30 appends during the outage do not each trigger a forward attempt.
    assert 0 < errors < 15

    await central.start()
    await eventually(lambda: len(central.ledger.events) == 35)
    assert central.ledger.tokens() == 5 * 7 + sum(range(1, 31))
    await metric_reaches(sidecar, "metering_sidecar_spool_depth", 0)
    assert await sidecar.metric("metering_sidecar_oldest_unforwarded_age_seconds") == 0
    # A retry from the embed service after forwarding still counts as a duplicate.
    assert (await sidecar.record(event("down-3"))).duplicates == 1


async def test_an_event_id_is_a_duplicate_only_within_its_org(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    """As central dedups: another org's request id never drops this org's event."""
    sidecar = sidecars(central.port)
    await sidecar.start()
    assert (await sidecar.record(event("same", org="org-1"))).recorded == 1
    assert (await sidecar.record(event("same", org="org-2"))).recorded == 1
    assert (await sidecar.record(event("same", org="org-1"))).duplicates == 1
    await eventually(lambda: central.ledger.deliveries == 2)
    await asyncio.sleep(0.3)  # a few forward intervals: nothing else goes out
    assert central.ledger.deliveries == 2


async def test_recovery_of_central_is_noticed_without_waiting_out_the_backoff(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    await central.stop()
    sidecar = sidecars(central.port, forward_interval_s=20, forward_backoff_max_s=20)
    await sidecar.start()
    await sidecar.record(event("a"))
    deadline = time.monotonic() + 10
    while await sidecar.metric("metering_sidecar_forward_errors_total") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # The forwarder now backs off for 10 to 20 s; the channel reconnecting ends that early.
    await central.start()
    started = time.monotonic()
    await eventually(lambda: "a" in central.ledger.events, within_s=20)
    assert time.monotonic() - started < 5


async def test_sigkilled_sidecar_restarts_with_its_spool_nothing_lost_nothing_twice(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    central.ledger.delay_s = 0.05  # central lags, so the spool holds a backlog at the kill
    sidecar = sidecars(central.port, forward_batch=5)
    await sidecar.start()

    answered: set[str] = set()
    failed: list[str] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            event_id = f"w{worker}-{n}"
            try:
                await sidecar.record(event(event_id))
                answered.add(event_id)
            except grpc.aio.AioRpcError:
                failed.append(event_id)
                return
            n += 1

    workers = [asyncio.create_task(load(w)) for w in range(4)]
    await eventually(lambda: len(answered) >= 60)
    sidecar.signal(signal.SIGKILL)
    await asyncio.gather(*workers)
    await sidecar.wait(10)
    assert len(central.ledger.events) < len(answered), "nothing was left in the spool to test"

    restarted = sidecars(central.port, forward_batch=5)
    await restarted.start()
    # The embed service retries what it was not answered for, with the same request ids.
    for event_id in failed:
        await restarted.record(event(event_id))
    expected = answered | set(failed)
    await eventually(lambda: set(central.ledger.events) == expected)
    assert central.ledger.tokens() == 7 * len(expected)
    await metric_reaches(restarted, "metering_sidecar_spool_depth", 0)


async def test_full_spool_refuses_with_resource_exhausted_until_drained(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    await central.stop()
    sidecar = sidecars(central.port, spool_max_events=5)
    await sidecar.start()
    assert (await sidecar.record(*(event(f"e{i}") for i in range(4)))).recorded == 4

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sidecar.record(event("e4"), event("e5"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await sidecar.metric("metering_sidecar_spool_depth") == 4  # nothing of it written
    # A retry of a spooled event needs no room; one more fresh event still fits.
    assert (await sidecar.record(event("e0"), event("e4"))).duplicates == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sidecar.record(event("e5"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    await central.start()
    await eventually(lambda: len(central.ledger.events) == 5)
    assert (await sidecar.record(event("e5"))).recorded == 1
    await eventually(lambda: len(central.ledger.events) == 6)


async def test_sigterm_forwards_the_spool_then_exits(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    await central.stop()
    sidecar = sidecars(central.port, forward_batch=5, shutdown_grace_s=20)
    await sidecar.start()
    for i in range(40):
        await sidecar.record(event(f"e{i}"))
    central.ledger.delay_s = 0.1  # 8 slow batches: the drain takes a while
    await central.start()
    sidecar.signal(signal.SIGTERM)
    # Draining begins with health NOT_SERVING: from then on a new call must be refused.
    address = f"127.0.0.1:{sidecar.port}"
    await eventually(lambda: not grpc_serving(address, METERING_SERVICE), within_s=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sidecar.record(event("late"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await sidecar.wait(25) == 0
    assert set(central.ledger.events) == {f"e{i}" for i in range(40)}


async def test_sigterm_with_central_down_exits_after_grace_and_keeps_the_spool(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    await central.stop()
    sidecar = sidecars(central.port, shutdown_grace_s=1)
    await sidecar.start()
    await sidecar.record(event("a"), event("b"))
    started = time.monotonic()
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 3  # not drained: a non-zero exit an operator can see
    assert time.monotonic() - started < 8

    await central.start()
    restarted = sidecars(central.port)
    await restarted.start()
    await eventually(lambda: set(central.ledger.events) == {"a", "b"})


async def test_events_central_rejects_are_dead_lettered_and_the_rest_arrive(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    central.ledger.rejected_orgs.add("org-gone")
    await central.stop()
    sidecar = sidecars(central.port, forward_batch=50)
    await sidecar.start()
    await sidecar.record(*(event(f"g{i}") for i in range(10)))
    await sidecar.record(event("bad", org="org-gone"))
    await sidecar.record(*(event(f"h{i}") for i in range(10)))
    await central.start()  # one batch of 21 with a poisoned event in the middle

    await eventually(lambda: len(central.ledger.events) == 20)
    assert "bad" not in central.ledger.events
    await metric_reaches(sidecar, "metering_sidecar_spool_depth", 0)
    assert await sidecar.metric("metering_sidecar_dead_letters_total") == 1
    assert await sidecar.metric("metering_sidecar_dead_letter_depth") == 1
    # The forwarder is not stuck on it: later usage still flows.
    await sidecar.record(event("after"))
    await eventually(lambda: "after" in central.ledger.events)


async def test_malformed_calls_and_central_only_methods_are_refused(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecars(central.port)
    await sidecar.start()
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await sidecar.record(event("ok"), event(""))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].event_id" in (bad.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as no_org:
        await sidecar.record(event("x", org=""))
    assert no_org.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await sidecar.metric("metering_sidecar_spool_depth") == 0  # nothing of either call

    with pytest.raises(grpc.aio.AioRpcError) as auth:
        await sidecar.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key="k"), timeout=5)
    assert auth.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as usage:
        await sidecar.stub.GetUsage(metering_pb2.GetUsageRequest(org_id="o"), timeout=5)
    assert usage.value.code() == grpc.StatusCode.UNIMPLEMENTED


# Every way a usage event can be invalid for central metering: the sidecar must refuse each
# one, since an event it acknowledged but central rejects could never be billed.
INVALID_EVENTS = {
    "empty event id": metering_pb2.UsageEvent(org_id="org-1", tokens=1),
    "event id too long": metering_pb2.UsageEvent(event_id="e" * 257, org_id="org-1", tokens=1),
    "empty org": metering_pb2.UsageEvent(event_id="a", tokens=1),
    "org id too long": metering_pb2.UsageEvent(event_id="a", org_id="o" * 41, tokens=1),
    "project id too long": metering_pb2.UsageEvent(
        event_id="a", org_id="org-1", project_id="p" * 41, tokens=1
    ),
    "model too long": metering_pb2.UsageEvent(
        event_id="a", org_id="org-1", model="m" * 201, tokens=1
    ),
    "tokens out of range": metering_pb2.UsageEvent(event_id="a", org_id="org-1", tokens=2**63),
    "inputs out of range": metering_pb2.UsageEvent(
        event_id="a", org_id="org-1", tokens=1, inputs=2_000_000
    ),
}


async def test_no_event_central_would_reject_as_invalid_is_acknowledged(
    central: Central, sidecars: Callable[..., SidecarProcess]
) -> None:
    sidecar = sidecars(central.port)
    await sidecar.start()
    acknowledged = []
    for kind, bad in INVALID_EVENTS.items():
        try:
            await sidecar.record(event("fine"), bad)
            acknowledged.append(kind)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, err)
            assert "events[1]" in (err.details() or ""), (kind, err.details())
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await sidecar.record()
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert acknowledged == [], f"acknowledged events central would dead-letter: {acknowledged}"
    assert await sidecar.metric("metering_sidecar_spool_depth") == 0
    assert central.ledger.events == {}


# -- against the real central service ----------------------------------------------------


class CentralProcess:
    """`python -m metering` on a SQLite ledger, as the sidecar meets it in production."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "central.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
        self.env.update({
            "METERING_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "METERING_HOST": "127.0.0.1",
            "METERING_PORT": str(self.port),
            "METERING_METRICS_PORT": str(free_port()),
            "METERING_BILL_INTERVAL_S": "0",
            "METERING_INSECURE_NO_AUTH": "true",
        })
        self.process: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "metering", *args], cwd=REPO_ROOT, env=self.env,
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "metering"], cwd=REPO_ROOT, env=self.env,
                stdout=log, stderr=log,
            )

    async def start(self) -> None:
        self.process = await asyncio.to_thread(self._spawn)
        try:
            await asyncio.to_thread(wait_serving, f"127.0.0.1:{self.port}", self.process, 60)
        except NotReady as exc:
            raise AssertionError(f"central: {exc}:\n{self.log_path.read_text()}") from None

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait, 10)

    async def usage(self, org_id: str) -> metering_pb2.GetUsageResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            reply: metering_pb2.GetUsageResponse = await metering_pb2_grpc.MeteringServiceStub(
                channel
            ).GetUsage(metering_pb2.GetUsageRequest(org_id=org_id), timeout=5)
            return reply


@pytest.fixture
async def real_central(tmp_path: Path) -> AsyncIterator[CentralProcess]:
    central = CentralProcess(tmp_path)
    central.run("migrate")
    yield central
    if central.process is not None and central.process.poll() is None:
        central.process.kill()
        central.process.wait(10)


async def test_real_central_outage_usage_arrives_once_and_unknown_orgs_are_dead_lettered(
    real_central: CentralProcess, sidecars: Callable[..., SidecarProcess]
) -> None:
    org = json.loads(real_central.run("admin", "create-org", "--name", "acme", "--json"))["org_id"]
    await real_central.start()
    sidecar = sidecars(real_central.port, forward_batch=20)
    await sidecar.start()

    tokens = 0
    for i in range(10):
        await sidecar.record(event(f"before-{i}", tokens=i + 1, org=org))
        tokens += i + 1
    await real_central.kill()
    for i in range(30):  # central is down: still acked, from the spool
        await sidecar.record(event(f"during-{i}", tokens=100 + i, org=org))
        tokens += 100 + i
    await sidecar.record(event("stray", org="org-that-does-not-exist"))
    # A retry of an answered request (same id) must not be billed twice.
    assert (await sidecar.record(event("during-5", tokens=105, org=org))).duplicates == 1
    await real_central.start()

    await metric_reaches(sidecar, "metering_sidecar_spool_depth", 0, within_s=30)
    usage = await real_central.usage(org)
    assert (usage.total_tokens, usage.total_requests) == (tokens, 40)
    # The real ledger answers FAILED_PRECONDITION for the unknown org: parked, not retried.
    assert await sidecar.metric("metering_sidecar_dead_letters_total") == 1
    assert await sidecar.metric(
        "metering_sidecar_forward_errors_total", {"code": "FAILED_PRECONDITION"}
    ) >= 1


def test_without_a_central_address_the_sidecar_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    result = subprocess.run(
        [*sidecar_command(), f"--spool-path={tmp_path / 'spool.db'}", "--port=0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "METERING_CENTRAL_ADDR" in result.stderr
    assert not (tmp_path / "spool.db").exists()


async def test_with_service_tokens_only_the_embed_service_records_and_central_gets_it(
    ledger: Ledger, sidecars: Callable[..., SidecarProcess]
) -> None:
    """The pod's embed token is needed to record; the sidecar forwards with its own token,
    which central metering knows as a sidecar's."""
    settings = Settings(gateway_tokens="gw", embed_tokens="embed-1", sidecar_tokens="sidecar-1")
    running = await start_server(ledger, settings, Metrics(), address="127.0.0.1:0")
    org = ledger.create_org("acme").id
    try:
        sidecar = sidecars(
            running.port, insecure_no_auth=False, embed_tokens="embed-1", central_token="sidecar-1"
        )
        await sidecar.start()
        for token in (None, "sidecar-1", "gw"):  # nobody, or a token of another role
            metadata = None if token is None else [("authorization", f"Bearer {token}")]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sidecar.stub.RecordUsage(
                    metering_pb2.RecordUsageRequest(events=[event("x", org=org)]),
                    metadata=metadata, timeout=5,
                )  # fmt: skip
            assert refused.value.code() in (
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
            ), token
        reply = await sidecar.stub.RecordUsage(
            metering_pb2.RecordUsageRequest(events=[event("req-1", tokens=11, org=org)]),
            metadata=[("authorization", "Bearer embed-1")], timeout=5,
        )  # fmt: skip
        assert reply.recorded == 1
        await eventually(lambda: ledger.usage(org).total_tokens == 11, within_s=20)
    finally:
        await running.stop(1.0, quiet_s=0)

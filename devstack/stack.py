"""The local stack as real processes: metering, the embed service and the gateway.

`make run` and the end-to-end tests start the services through this one module, so what a
developer runs by hand is what the tests exercise. Each service runs as `python -m <package>`
in its own process session (Ctrl-C reaches only the launcher, which then stops the services
in dependency order: gateway first, metering last, so no answered request loses its usage).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devstack.probes import NotReady, free_port, grpc_serving, http_ok, stop_process, wait_ready
from intent_embed.v1 import metering_pb2, metering_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    embed: int = 50051
    embed_metrics: int = 9101
    metering: int = 50052
    metering_metrics: int = 9102
    gateway: int = 8080
    sidecar: int = 50053
    sidecar_metrics: int = 9103
    gateway_metrics: int = 9104

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(8)))


@dataclass
class Service:
    """One service process and where its output goes."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log_file.close()  # the child holds its own descriptor

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# Start order: each service needs the one before it (embed reports usage to metering, or to
# the sidecar that forwards to it; the gateway authenticates against metering and calls
# embed). Stop order is the reverse.
MODULES = {
    "metering": ["-m", "metering"],
    "sidecar": ["-m", "metering", "sidecar"],
    "embed": ["-m", "embed_service"],
    "gateway": ["-m", "gateway"],
}


class StackError(RuntimeError):
    """A service of the stack exited or did not become ready."""


@dataclass
class Stack:
    """Metering, embed service and gateway on `ports`, with state under `data_dir`."""

    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    # With a sidecar, usage goes embed -> sidecar spool -> central metering, as in a pod.
    sidecar: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    # Service tokens made for this stack alone: metering serves only callers that send one.
    tokens: Mapping[str, str] = field(
        default_factory=lambda: {
            role: secrets.token_urlsafe(32) for role in ("gateway", "embed", "sidecar")
        }
    )

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'metering.db').resolve()}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.ports.gateway}"

    @property
    def embed_address(self) -> str:
        return f"{self.host}:{self.ports.embed}"

    @property
    def metering_address(self) -> str:
        return f"{self.host}:{self.ports.metering}"

    @property
    def sidecar_address(self) -> str:
        return f"{self.host}:{self.ports.sidecar}"

    def env(self, service: str = "") -> dict[str, str]:
        """The environment of `service` ("" for the admin CLI): one shared set of settings,
        except that the sidecar listens on its own ports and forwards to central metering."""
        env = dict(os.environ)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "METERING_HOST": self.host,
                "METERING_PORT": str(self.ports.metering),
                "METERING_METRICS_HOST": self.host,
                "METERING_METRICS_PORT": str(self.ports.metering_metrics),
                "METERING_DATABASE_URL": self.database_url,
                "METERING_MIGRATE_ON_START": "true",
                "EMBED_HOST": self.host,
                "EMBED_PORT": str(self.ports.embed),
                "EMBED_METRICS_PORT": str(self.ports.embed_metrics),
                "EMBED_METERING_ADDR": (
                    self.sidecar_address if self.sidecar else self.metering_address
                ),
                "GATEWAY_HOST": self.host,
                "GATEWAY_PORT": str(self.ports.gateway),
                "GATEWAY_METRICS_PORT": str(self.ports.gateway_metrics),
                "GATEWAY_EMBED_ADDR": f"dns:///{self.embed_address}",
                "GATEWAY_METERING_ADDR": self.metering_address,
                "METERING_GATEWAY_TOKENS": self.tokens["gateway"],
                "METERING_EMBED_TOKENS": self.tokens["embed"],
                "METERING_SIDECAR_TOKENS": self.tokens["sidecar"],
                "METERING_CENTRAL_TOKEN": self.tokens["sidecar"],
                "EMBED_METERING_TOKEN": self.tokens["embed"],
                "GATEWAY_METERING_TOKEN": self.tokens["gateway"],
            }
        )
        if service == "sidecar":
            env.update(
                {
                    "METERING_PORT": str(self.ports.sidecar),
                    "METERING_METRICS_PORT": str(self.ports.sidecar_metrics),
                    "METERING_CENTRAL_ADDR": self.metering_address,
                    "METERING_SPOOL_PATH": str((self.data_dir / "spool.db").resolve()),
                }
            )
        env.update(self.extra_env)
        return env

    def _run(self, module: str, *args: str) -> str:
        """Runs `python -m MODULE ARGS` against this stack's ledger; returns its stdout."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"{module} {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def metering_admin(self, *args: str) -> dict[str, object]:
        """Runs `python -m metering admin ... --json` against this stack's ledger."""
        reply: dict[str, object] = json.loads(self._run("metering", "admin", *args, "--json"))
        return reply

    def migrate(self) -> None:
        """Brings the ledger schema up to date (`python -m metering migrate`)."""
        self._run("metering", "migrate")

    def ledger_tokens(self, org_id: str) -> int:
        """The org's cumulative billed tokens, as central metering's GetUsage reports them
        (asked as the gateway asks: with its service token)."""
        with grpc.insecure_channel(self.metering_address) as channel:
            reply = metering_pb2_grpc.MeteringServiceStub(channel).GetUsage(
                metering_pb2.GetUsageRequest(org_id=org_id),
                timeout=30,
                metadata=[("authorization", f"Bearer {self.tokens['gateway']}")],
            )
        return int(reply.total_tokens)

    def ensure_demo(self) -> dict[str, object]:
        """Creates (first run) or reuses the demo org, project and API key."""
        self.migrate()
        key_file = str(self.data_dir / "demo-key")
        reply: dict[str, object] = json.loads(self._run("devstack.demo", "--key-file", key_file))
        return reply

    def ready(self, name: str) -> bool:
        """Whether service `name` answers its readiness check."""
        if name == "gateway":
            return http_ok(f"{self.gateway_url}/readyz")
        address = {
            "embed": self.embed_address,
            "sidecar": self.sidecar_address,
            "metering": self.metering_address,
        }[name]
        return grpc_serving(address)

    def start(self, timeout: float = 180.0) -> None:
        """Starts all three services, each once the one it depends on is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, args in MODULES.items():
                if name == "sidecar" and not self.sidecar:
                    continue
                self.services[name] = Service(
                    name=name,
                    args=args,
                    env=self.env(name),
                    log_path=self.data_dir / "logs" / f"{name}.log",
                )
                self.restart(name, timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str, timeout: float = 180.0) -> None:
        """Starts a service (again, after a stop or a kill) and waits until it is ready."""
        service = self.services[name]
        service.start()
        try:
            wait_ready(lambda: self.ready(name), service.process, timeout, name)
        except NotReady as exc:
            raise StackError(f"{exc}:\n{service.log_tail()}") from None
        log.info("service=%s ready", name)

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """Stops the services front to back; returns each one's exit code."""
        codes: dict[str, int | None] = {}
        for name in reversed(MODULES):
            if name in self.services:
                codes[name] = self.services[name].stop(timeout)
        return codes

"""`make run`: starts metering, the embed service and the gateway on local defaults.

State (the SQLite ledger, the demo key, the services' logs) lives under `--data-dir`, so a
second run reuses the same demo org and key. Ctrl-C stops the three services cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from devstack.stack import Ports, Stack, StackError
from intent_embed.logs import configure_logging


def example(stack: Stack, demo: dict[str, object]) -> str:
    key = demo["api_key"]
    url = stack.gateway_url
    return f"""
intent-embed is running.
  gateway   {url}   (OpenAI-compatible: POST /v2/embeddings)
  dashboard {url}/dashboard   (usage and billing: paste the key below)
  embed     {stack.embed_address}   (gRPC, intent_embed.v1.EmbedService)
  metering  {stack.metering_address}   (gRPC, ledger {stack.database_url})
  logs      {stack.data_dir / "logs"}
  demo org  {demo["org_id"]}   project {demo["project_id"]}

Try it with curl:

curl -s {url}/v2/embeddings \\
  -H 'Authorization: Bearer {key}' \\
  -H 'Content-Type: application/json' \\
  -d '{{"input": "my card was charged twice", "model": "intent-embed"}}'

or with the openai client (pip install openai):

python - <<'PY'
from openai import OpenAI
client = OpenAI(api_key="{key}", base_url="{url}/v2")
response = client.embeddings.create(model="intent-embed",
    input=["I want to use the intent embeddings api", "cancel my order"])
print(len(response.data), "vectors of", len(response.data[0].embedding), "dims;", response.usage)
PY

Usage so far: curl -s '{url}/v2/usage' -H 'Authorization: Bearer {key}'
   or, as an operator: .venv/bin/python -m metering admin usage --org {demo["org_id"]}
   (with METERING_DATABASE_URL={stack.database_url})
Traces: {_tracing_line()}
Press Ctrl-C to stop.
"""


def _tracing_line() -> str:
    if os.environ.get("OTEL_TRACES_EXPORTER") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "on (OpenTelemetry, as OTEL_* in this shell say); console spans go to the logs"
    return (
        "off. OTEL_TRACES_EXPORTER=console make run prints each service's spans into its log;"
        "\n   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 make run sends them to a local "
        "Jaeger or Collector"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=(
            "Start metering, the embed service and the gateway locally (packaged model, SQLite "
            "ledger, Stripe off), create or reuse a demo org, project and API key, and print a "
            "working curl and openai example and the URL of the usage dashboard. Ports follow the "
            "services' own settings: EMBED_PORT, EMBED_METRICS_PORT, METERING_PORT, "
            "METERING_METRICS_PORT, GATEWAY_PORT, GATEWAY_METRICS_PORT."
        ),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEVSTACK_DATA_DIR", ".data")),
        help="ledger, demo key and logs (env DEVSTACK_DATA_DIR, default ./.data)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=300.0, help="seconds to wait for each service"
    )
    return parser.parse_args(argv)


def ports_from_env() -> Ports:
    defaults = Ports()
    return Ports(
        embed=int(os.environ.get("EMBED_PORT", defaults.embed)),
        embed_metrics=int(os.environ.get("EMBED_METRICS_PORT", defaults.embed_metrics)),
        metering=int(os.environ.get("METERING_PORT", defaults.metering)),
        metering_metrics=int(os.environ.get("METERING_METRICS_PORT", defaults.metering_metrics)),
        gateway=int(os.environ.get("GATEWAY_PORT", defaults.gateway)),
        gateway_metrics=int(os.environ.get("GATEWAY_METRICS_PORT", defaults.gateway_metrics)),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("INFO")
    stack = Stack(data_dir=args.data_dir, ports=ports_from_env())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        demo = stack.ensure_demo()
        print("starting metering, embed service and gateway...", flush=True)
        stack.start(timeout=args.start_timeout)
    except StackError as exc:
        print(f"could not start the stack: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    print(example(stack, demo), flush=True)
    while not stop.is_set():
        # Wake up now and then to notice a service that died on its own.
        stop.wait(1.0)
        dead = [name for name, svc in stack.services.items() if not svc.alive()]
        if dead:
            print(f"{', '.join(dead)} exited; see {stack.data_dir / 'logs'}", file=sys.stderr)
            break
    print("stopping...", flush=True)
    codes = stack.stop()
    print("stopped: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()))
    return 0 if all(code == 0 for code in codes.values()) and stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())

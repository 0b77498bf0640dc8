"""The in-process MeteringService handle the `service` fixture yields."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from intent_embed.v1 import metering_pb2_grpc
from metering.ledger import Ledger
from metering.server import Metrics, RunningServer


@dataclass
class Service:
    ledger: Ledger
    metrics: Metrics
    running: RunningServer
    channel: grpc.aio.Channel
    stub: metering_pb2_grpc.MeteringServiceStub

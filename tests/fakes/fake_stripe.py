"""A fake Stripe HTTP API on 127.0.0.1, used through the real ``stripe`` SDK in tests.

It implements what the billing worker touches: customers (a customer the fake never saw is
answered as one an operator set up outside, with a default card), PaymentIntents (create with
confirm, which needs a payment method as at Stripe; confirm again; retrieve; search by
metadata), Stripe's Idempotency-Key semantics (same key and same body: the first answer
replayed; same key, other body: an idempotency error; `forget_keys` prunes them as Stripe does
after 24 hours), and scripted faults for the next PaymentIntent creations or confirmations:
card declines with a decline code, HTTP 500 before anything happens, 403 (a restricted key),
slow answers (the intent is created first, the answer comes late: a client that gives up or
dies has still been charged) and intents left processing (their end comes later, by webhook).
`stall` makes every API request wait, unanswered, until `resume` (Stripe hanging); `stalled`
counts the requests waiting.
Self-service billing (Checkout, Billing Portal, SetupIntents, PaymentMethods, signed webhook
delivery) is :mod:`tests.fakes.fake_stripe_billing`. Every request is recorded for assertions.
Run it in a thread (``FakeStripe().start()``) or as a process
(``python -m tests.fakes.fake_stripe``).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.fake_stripe_billing import BillingObjects, Route


@dataclass
class RecordedRequest:
    method: str
    path: str
    idempotency_key: str | None
    params: dict[str, Any]
    status: int = 0
    replayed: bool = False


@dataclass
class _Stored:
    body_key: str
    status: int
    answer: dict[str, Any]


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (a[b][c]=v) back into nested dicts."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        head, *rest = key.replace("]", "").split("[")
        node = out
        for name in [head, *rest][:-1]:
            node = node.setdefault(name, {})
        node[[head, *rest][-1]] = value
    return out


@dataclass
class FakeStripe(BillingObjects):
    """The fake API; `script` holds what the next PaymentIntent creations do, and webhook
    events go to `webhook_url` signed with `webhook_secret`."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key_prefix: str = "sk_test_"
    requests: list[RecordedRequest] = field(default_factory=list)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    declining_customers: set[str] = field(default_factory=set)
    processing_customers: set[str] = field(default_factory=set)  # their intents stay processing
    delay_s: float = 0.0  # added to every PaymentIntent answer (widens race windows)
    script: deque[str] = field(default_factory=deque)
    created: threading.Event = field(default_factory=threading.Event)
    webhook_url: str = ""
    webhook_secret: str = "whsec_fake"
    webhook_sink: Callable[[bytes, str], tuple[int, dict[str, Any]]] | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._init_billing()
        self._lock = threading.Lock()
        self._idempotent: dict[str, _Stored] = {}
        self._in_flight: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._held = 0

    # ---- control -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def stall(self) -> None:
        """From now on API requests get no answer (and change nothing) until `resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        """Stalled requests go on, in no set order, and new ones are answered at once."""
        self._flowing.set()

    def stalled(self) -> int:
        """API requests waiting for `resume` now."""
        with self._lock:
            return self._held

    def then(self, *steps: str) -> None:
        """Queues behaviours of the next PaymentIntent creations or confirmations: "decline"
        (generic_decline), "decline:<decline code>", "500", "403", "slow:<seconds>" (create,
        then answer late), "processing" (left processing), "ok"."""
        self.script.extend(steps)

    def add_customer(self, customer_id: str, default_payment_method: str | None) -> None:
        """A customer set up at Stripe, with that invoice default payment method (or none)."""
        settings = {"default_payment_method": default_payment_method}
        with self._lock:
            self.customers[customer_id] = {
                "id": customer_id, "object": "customer", "metadata": {},
                "invoice_settings": settings,
            }  # fmt: skip

    def forget_keys(self) -> None:
        """Drops every stored idempotent answer, as Stripe prunes keys after 24 hours."""
        with self._lock:
            self._idempotent.clear()

    def intents_for(self, customer: str) -> list[dict[str, Any]]:
        return [pi for pi in self.payment_intents.values() if pi["customer"] == customer]

    def posts(self, path: str = "/v1/payment_intents") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    # ---- HTTP ----------------------------------------------------------------------------

    def _handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length).decode() if length else ""
        url = urlsplit(http.path)
        pairs = parse_qsl(raw or url.query, keep_blank_values=True)
        path = url.path
        if path.startswith(("/pay/", "/portal/")):
            self._send_page(http, *self.page(method, path))
            return
        key = http.headers.get("Idempotency-Key")
        record = RecordedRequest(method, path, key, _nest(pairs))
        with self._lock:
            self.requests.append(record)
        auth = http.headers.get("Authorization", "")
        if not auth.startswith("Bearer " + self.api_key_prefix):
            self._send(http, record, 401, _error("invalid_request_error", "Invalid API Key"))
            return
        self._hold()
        body_key = json.dumps([method, path, sorted(pairs)])
        if method == "POST" and key and self._answered_by_key(http, record, key, body_key):
            return
        try:
            status, answer, delay, store = self._route(method, path, record.params)
            if store and method == "POST" and key:
                with self._lock:
                    self._idempotent[key] = _Stored(body_key, status, answer)
        finally:
            if method == "POST" and key:
                with self._lock:
                    self._in_flight.discard(key)
        if delay:
            time.sleep(delay)
        self._send(http, record, status, answer)

    def _hold(self) -> None:
        if self._flowing.is_set():
            return
        with self._lock:
            self._held += 1
        try:
            self._flowing.wait()
        finally:
            with self._lock:
                self._held -= 1

    def _answered_by_key(
        self, http: BaseHTTPRequestHandler, record: RecordedRequest, key: str, body_key: str
    ) -> bool:
        """Stripe's idempotency: a stored answer replayed, 409 while the key's first request
        runs, 400 for the key with other parameters; False (key now in flight) otherwise."""
        with self._lock:
            stored = self._idempotent.get(key)
            busy = stored is None and key in self._in_flight
            if stored is None and not busy:
                self._in_flight.add(key)
        if busy:
            message = "There is currently another in-progress request using this Idempotent Key."
            self._send(http, record, 409, _error("idempotency_error", message))
        elif stored is not None and stored.body_key != body_key:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with."
            )
            self._send(http, record, 400, _error("idempotency_error", message))
        elif stored is not None:
            record.replayed = True
            self._send(http, record, stored.status, stored.answer, replayed=True)
        return busy or stored is not None

    def _route(self, method: str, path: str, params: dict[str, Any]) -> Route:
        parts = [p for p in path.split("/") if p]
        routed = self._route_billing(method, parts, params)
        if routed is not None:
            return routed
        if parts[:2] == ["v1", "customers"]:
            if method == "POST" and len(parts) == 2:
                cus = {
                    "id": "cus_" + secrets.token_hex(7),
                    "object": "customer",
                    "email": params.get("email"),
                    "metadata": params.get("metadata", {}),
                }
                self.customers[cus["id"]] = cus
                return 200, cus, 0.0, True
            if method == "GET" and len(parts) == 3 and parts[2].startswith("cus_"):
                return 200, self._customer(parts[2]), 0.0, False
            return 404, _error("invalid_request_error", "No such customer"), 0.0, False
        if parts[:2] == ["v1", "payment_intents"]:
            if method == "GET" and parts[2:] == ["search"]:
                return 200, self._search_intents(str(params.get("query", ""))), 0.0, False
            if method == "POST" and len(parts) == 4 and parts[3] == "confirm":
                return self._confirm_intent(parts[2], params)
            if method == "GET" and len(parts) == 3:
                pi = self.payment_intents.get(parts[2])
                if pi is None:
                    return 404, _error("invalid_request_error", "No such payment_intent"), 0, False
                return 200, pi, 0.0, False
            if method == "POST" and len(parts) == 2:
                return self._create_intent(params)
        return 404, _error("invalid_request_error", f"Unrecognized request URL {path}"), 0, False

    def _next_step(self) -> tuple[str, Route | None]:
        """The next scripted behaviour, and the answer it makes before anything happens."""
        with self._lock:
            step = self.script.popleft() if self.script else "ok"
        if step == "500":
            # Fails before anything is created, and is not stored: a resend is processed.
            return step, (
                500,
                _error("api_error", "Something went wrong on Stripe's end."),
                0,
                False,
            )
        if step == "403":
            message = "The provided key does not have the required permissions."
            return step, (403, _error("invalid_request_error", message), 0.0, False)
        return step, None

    def _create_intent(self, params: dict[str, Any]) -> Route:
        step, early = self._next_step()
        if early is not None:
            return early
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError):
            return 400, _error("invalid_request_error", "Missing required param: amount."), 0, True
        if params.get("confirm") == "true" and not params.get("payment_method"):
            # PaymentIntents never fall back to the customer's invoice default.
            message = "You cannot confirm this PaymentIntent because it's missing a payment method."
            return 400, _error("invalid_request_error", message), 0.0, True
        customer = str(params.get("customer", ""))
        pi = {
            "id": "pi_" + secrets.token_hex(8),
            "object": "payment_intent",
            "amount": amount,
            "currency": params.get("currency"),
            "customer": customer,
            "confirm": params.get("confirm") == "true",
            "off_session": params.get("off_session") == "true",
            "metadata": params.get("metadata", {}),
            "description": params.get("description"),
            "payment_method": params.get("payment_method"),
            "created": int(time.time()),
            "confirmations": 1,
        }
        with self._lock:
            self.payment_intents[pi["id"]] = pi
        self.created.set()
        return self._charge(pi, step)

    def _confirm_intent(self, intent_id: str, params: dict[str, Any]) -> Route:
        pi = self.payment_intents.get(intent_id)
        if pi is None:
            return 404, _error("invalid_request_error", "No such payment_intent"), 0.0, False
        if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
            message = f"This PaymentIntent's status is {pi['status']}: it cannot be confirmed."
            return 400, _error("invalid_request_error", message), 0.0, True
        step, early = self._next_step()
        if early is not None:
            return early
        with self._lock:
            pi["payment_method"] = params.get("payment_method") or pi["payment_method"]
            pi["confirmations"] += 1
        return self._charge(pi, step)

    def _charge(self, pi: dict[str, Any], step: str) -> Route:
        """Confirms `pi` as the scripted `step` says: succeeded, processing or declined."""
        customer = pi["customer"]
        declined = step.startswith("decline") or customer in self.declining_customers
        processing = step == "processing" or customer in self.processing_customers
        with self._lock:
            pi["status"] = (
                "requires_payment_method"
                if declined
                else "processing"
                if processing
                else "succeeded"
            )
        delay = float(step.split(":", 1)[1]) if step.startswith("slow:") else self.delay_s
        if declined:
            code = step.split(":", 1)[1] if ":" in step else "generic_decline"
            error = _error("card_error", "Your card was declined.")
            error["error"].update(code="card_declined", decline_code=code, payment_intent=dict(pi))
            return 402, error, delay, True
        return 200, dict(pi), delay, True

    def _search_intents(self, query: str) -> dict[str, Any]:
        """Stripe's search, for queries of metadata['key']:'value' clauses joined by AND."""
        wanted = dict(re.findall(r"metadata\['([^']*)'\]:'([^']*)'", query))
        found = [
            pi for pi in self.payment_intents.values()
            if all(pi.get("metadata", {}).get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        return {"object": "search_result", "data": found, "has_more": False, "url": "/v1/search"}

    def _customer(self, customer_id: str) -> dict[str, Any]:
        with self._lock:
            known = customer_id in self.customers
        if not known:
            # Set up outside (an operator attached it): it has a default card.
            self.add_customer(customer_id, f"pm_default_{customer_id}")
        return self.customers[customer_id]

    def _send(
        self,
        http: BaseHTTPRequestHandler,
        record: RecordedRequest,
        status: int,
        answer: dict[str, Any],
        replayed: bool = False,
    ) -> None:
        record.status = status
        data = json.dumps(answer).encode()
        try:
            http.send_response(status)
            http.send_header("Content-Type", "application/json")
            http.send_header("Content-Length", str(len(data)))
            http.send_header("Request-Id", "req_" + secrets.token_hex(6))
            if replayed:
                http.send_header("Idempotent-Replayed", "true")
            if status == 500:
                # Real Stripe sends this on 500s it did not process: the SDK may resend.
                http.send_header("Stripe-Should-Retry", "true")
            http.end_headers()
            http.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) or died; Stripe's side is done anyway

    @staticmethod
    def _send_page(http: BaseHTTPRequestHandler, status: int, kind: str, content: str) -> None:
        data = b"" if status == 303 else content.encode()
        http.send_response(status)
        if status == 303:
            http.send_header("Location", content)
        else:
            http.send_header("Content-Type", f"{kind}; charset=utf-8")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Stripe API for tests")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeStripe(port=args.port).start()
    print(fake.base_url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

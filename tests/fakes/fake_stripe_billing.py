"""Self-service billing in the fake Stripe: Checkout Sessions in setup mode, Billing Portal
sessions, SetupIntents and PaymentMethods, and webhook events delivered as Stripe delivers
them, signed with the endpoint secret (``Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of
"<ts>.<body>">``), so the real SDK's ``Webhook.construct_event`` verifies them.

The test (or a browser on the fake's checkout page) plays the user: `complete_checkout`
collects a card and sends ``checkout.session.completed``; `choose_default` picks (or adds) a
card in the Billing Portal and sends ``customer.updated``; `settle_intent` makes a processing
PaymentIntent succeed or fail and sends its event; `detach` removes a payment method;
`delete_customer` deletes a customer. Every event is kept, so a test can deliver it again
(`redeliver`), late, or with a forged signature; events are stamped `created` by `clock`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Route = tuple[int, dict[str, Any], float, bool]


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header Stripe computes for `payload` (its v1 scheme)."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Delivery:
    """One POST of an event to the webhook endpoint, and what the endpoint answered."""

    event_id: str
    status: int
    body: dict[str, Any]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class BillingObjects:
    """The fake's self-service objects and its webhook sender (mixed into FakeStripe, which
    provides `_lock`, `customers`, `payment_intents` and `base_url`)."""

    _lock: threading.Lock
    customers: dict[str, dict[str, Any]]
    payment_intents: dict[str, dict[str, Any]]
    clock: Callable[[], float]  # Stripe's time: each event's `created`
    webhook_url: str
    webhook_secret: str
    # Set: events go to this callable (payload, Stripe-Signature) instead of an HTTP POST to
    # webhook_url, e.g. straight to metering's ApplyStripeEvent.
    webhook_sink: Callable[[bytes, str], tuple[int, dict[str, Any]]] | None

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    def _init_billing(self) -> None:
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.setup_intents: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.events: dict[str, bytes] = {}
        self.deliveries: list[Delivery] = []

    # ---- API routes -----------------------------------------------------------------------

    def _route_billing(self, method: str, parts: list[str], params: dict[str, Any]) -> Route | None:
        stores = {
            ("v1", "checkout", "sessions"): self.checkout_sessions,
            ("v1", "billing_portal", "sessions"): self.portal_sessions,
            ("v1", "setup_intents"): self.setup_intents,
            ("v1", "payment_methods"): self.payment_methods,
        }
        for prefix, store in stores.items():
            if tuple(parts[: len(prefix)]) != prefix:
                continue
            rest = parts[len(prefix) :]
            if method == "GET" and len(rest) == 1 and rest[0] in store:
                return 200, store[rest[0]], 0.0, False
            if method == "POST" and not rest and store is self.checkout_sessions:
                return self._create_checkout(params)
            if method == "POST" and not rest and store is self.portal_sessions:
                return self._create_portal(params)
            return 404, _error(f"No such object: {'/'.join(parts)}"), 0.0, False
        if parts[:2] == ["v1", "customers"] and method == "POST" and len(parts) == 3:
            customer = self.customers.get(parts[2])
            if customer is None or customer.get("deleted"):
                return 404, _error("No such customer"), 0.0, False
            for key, value in params.items():
                merged = {**customer.get(key, {}), **value} if isinstance(value, dict) else value
                customer[key] = merged
            return 200, customer, 0.0, True
        return None

    def _create_checkout(self, params: dict[str, Any]) -> Route:
        customer = str(params.get("customer", ""))
        if params.get("mode") != "setup" or customer not in self.customers:
            return 400, _error("mode must be setup, for an existing customer"), 0.0, True
        if not params.get("currency") or not params.get("success_url"):
            return 400, _error("Missing required param: currency or success_url."), 0.0, True
        intent = {
            "id": _new_id("seti_"), "object": "setup_intent", "customer": customer,
            "status": "requires_payment_method", "payment_method": None,
            "metadata": (params.get("setup_intent_data") or {}).get("metadata", {}),
        }  # fmt: skip
        session_id = _new_id("cs_test_")
        session = {
            "id": session_id, "object": "checkout.session", "mode": "setup",
            "status": "open", "customer": customer, "setup_intent": intent["id"],
            "currency": params["currency"], "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"), "metadata": params.get("metadata", {}),
            "client_reference_id": params.get("client_reference_id"),
            "url": f"{self.base_url}/pay/{session_id}",
        }  # fmt: skip
        with self._lock:
            self.setup_intents[intent["id"]] = intent
            self.checkout_sessions[session_id] = session
        return 200, session, 0.0, True

    def _create_portal(self, params: dict[str, Any]) -> Route:
        customer = str(params.get("customer", ""))
        if customer not in self.customers:
            return 400, _error("No such customer"), 0.0, True
        session_id = _new_id("bps_")
        session = {
            "id": session_id, "object": "billing_portal.session", "customer": customer,
            "return_url": params.get("return_url"), "url": f"{self.base_url}/portal/{session_id}",
        }  # fmt: skip
        with self._lock:
            self.portal_sessions[session_id] = session
        return 200, session, 0.0, True

    # ---- what the user (or Stripe) does ----------------------------------------------------

    def complete_checkout(self, session_id: str, last4: str = "4242") -> Delivery:
        """The user saves a card on the session's page: the SetupIntent succeeds with a new
        payment method attached to the customer, and checkout.session.completed is sent."""
        with self._lock:
            session = self.checkout_sessions[session_id]
            intent = self.setup_intents[session["setup_intent"]]
            method = {
                "id": _new_id("pm_"), "object": "payment_method", "type": "card",
                "card": {"brand": "visa", "last4": last4}, "customer": session["customer"],
            }  # fmt: skip
            self.payment_methods[method["id"]] = method
            intent.update(status="succeeded", payment_method=method["id"])
            session["status"] = "complete"
        return self.send_event("checkout.session.completed", session)

    def choose_default(self, customer_id: str, payment_method_id: str = "") -> Delivery:
        """In the Billing Portal the user makes a card the default: that one, or a new card
        (its id in the event); Stripe sends customer.updated."""
        with self._lock:
            customer = self.customers[customer_id]
            if not payment_method_id:
                payment_method_id = _new_id("pm_")
                self.payment_methods[payment_method_id] = {
                    "id": payment_method_id, "object": "payment_method", "type": "card",
                    "card": {"brand": "visa", "last4": "4444"}, "customer": customer_id,
                }  # fmt: skip
            previous = {"invoice_settings": dict(customer.get("invoice_settings") or {})}
            customer["invoice_settings"] = {"default_payment_method": payment_method_id}
        return self.send_event("customer.updated", customer, previous)

    def delete_customer(self, customer_id: str) -> Delivery:
        """The customer deleted (in Stripe's dashboard): reading it answers `deleted`."""
        with self._lock:
            customer = self.customers[customer_id]
            self.customers[customer_id] = {"id": customer_id, "object": "customer",
                                           "deleted": True}  # fmt: skip
        return self.send_event("customer.deleted", customer)

    def detach(self, payment_method_id: str) -> Delivery:
        with self._lock:
            method = self.payment_methods[payment_method_id]
            previous = {"customer": method["customer"]}
            method["customer"] = None
            # As at Stripe: a detached default is no longer the customer's default.
            settings = self.customers.get(previous["customer"], {}).get("invoice_settings")
            if settings and settings.get("default_payment_method") == payment_method_id:
                settings["default_payment_method"] = None
        return self.send_event("payment_method.detached", method, previous)

    def settle_intent(self, intent_id: str, succeeded: bool) -> Delivery:
        """A processing PaymentIntent reaches its end at Stripe, and its event is sent."""
        with self._lock:
            intent = self.payment_intents[intent_id]
            if succeeded:
                intent["status"] = "succeeded"
            else:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = {
                    "type": "card_error", "code": "card_declined",
                    "message": "Your card was declined.",
                }  # fmt: skip
        kind = "payment_intent.succeeded" if succeeded else "payment_intent.payment_failed"
        return self.send_event(kind, intent)

    # ---- webhook delivery -----------------------------------------------------------------

    def send_event(
        self, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> Delivery:
        data: dict[str, Any] = {"object": json.loads(json.dumps(obj))}
        if previous is not None:
            data["previous_attributes"] = previous
        event_id = _new_id("evt_")
        event: dict[str, Any] = {
            "id": event_id, "object": "event", "api_version": "2025-10-29.clover",
            "created": int(self.clock()), "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": kind, "data": data,
        }  # fmt: skip
        payload = json.dumps(event).encode()
        with self._lock:
            self.events[event_id] = payload
        return self.redeliver(event_id)

    def redeliver(self, event_id: str, secret: str | None = None) -> Delivery:
        """Posts the stored event again (a fresh timestamp), signed with `secret` (default:
        the endpoint's secret; another one forges the signature)."""
        payload = self.events[event_id]
        header = signature_header(payload, secret or self.webhook_secret, int(time.time()))
        if self.webhook_sink is not None:
            status, answer = self.webhook_sink(payload, header)
            delivery = Delivery(event_id, status, answer)
            self.deliveries.append(delivery)
            return delivery
        request = urllib.request.Request(
            self.webhook_url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "Stripe-Signature": header},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status, body = reply.status, reply.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        delivery = Delivery(event_id, status, json.loads(body or b"{}"))
        self.deliveries.append(delivery)
        return delivery

    # ---- the pages a browser is sent to -------------------------------------------------

    def page(self, method: str, path: str) -> tuple[int, str, str]:
        """(status, content type, body or redirect target) of a hosted page."""
        kind, _, session_id = path.strip("/").partition("/")
        if kind == "portal" and session_id in self.portal_sessions:
            return 200, "text/html", _html("Billing portal", "Manage your payment method.")
        session = self.checkout_sessions.get(session_id) if kind == "pay" else None
        if session is None:
            return 404, "text/html", _html("Not found", "No such page.")
        if method == "POST":
            self.complete_checkout(session_id)
            return 303, "", str(session["success_url"])
        form = (
            f'<form method="post"><p>Customer {html.escape(session["customer"])}</p>'
            '<button id="save-card" type="submit">Save card</button></form>'
        )
        return 200, "text/html", _html("Set up a payment method", form)


def _html(title: str, body: str) -> str:
    return f"<!doctype html><title>{title}</title><h1>{title}</h1>{body}"


def _error(message: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "message": message}}

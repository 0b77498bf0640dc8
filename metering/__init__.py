"""intent-embed metering: the usage ledger, API keys, the MeteringService gRPC server, the
billing worker that turns cumulative usage into whole-dollar Stripe charges, and the admin CLI.

Entry point: ``python -m metering`` (central service), ``python -m metering migrate``,
``python -m metering admin ...``, ``python -m metering billing`` and ``python -m metering sidecar``.
"""

"""Alembic migrations of the metering ledger (run with ``python -m metering migrate``)."""

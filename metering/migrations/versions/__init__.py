"""Alembic revision scripts of the metering ledger, applied in order."""

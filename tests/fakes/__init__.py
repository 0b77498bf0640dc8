"""Test doubles of outside services (a fake Stripe HTTP API)."""

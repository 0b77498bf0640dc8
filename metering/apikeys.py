"""API keys: generation, the stored hash and the constant-time check.

A key is ``ie_<id>_<secret>``: ``ie_<id>`` is its public id (stored in clear, shown in
listings and logs, used to find the row), the whole key is stored only as a SHA-256 hash. Keys
carry 256 random bits, so a fast hash is enough (no password-style stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "ie_"


def new_key() -> tuple[str, str]:
    """A fresh (key id, plaintext key) pair."""
    key_id = KEY_PREFIX + secrets.token_hex(6)
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The public id a presented key claims, or None when it is not shaped like our keys."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    parts = key.split("_", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return f"{parts[0]}_{parts[1]}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(hash_key(key), stored_hash)

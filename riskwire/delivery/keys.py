"""API keys: ``rw_<id>_<secret>``. The id is public (it names the key in logs and lists); only the
SHA-256 of the secret is stored, so a leaked database does not leak working keys. A random
256-bit secret needs no slow hash: there is nothing to guess."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

SCOPES = {
    "alerts:read": "alert history, ticker scores, the SSE stream and the live page",
    "subscriptions:write": "create, change and delete the key's own subscriptions",
    "replays": "create, cancel and read replay jobs",
    "ingest": "push items to POST /ingest/{source} (vendors that push)",
    "labels": "label documents' sentiment and read the labels (analysts' judgements)",
    "admin": "every scope",
}
PREFIX = "rw"


@dataclass(frozen=True)
class NewKey:
    id: str
    token: str  # shown once, never stored
    secret_hash: str


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {', '.join(SCOPES)}")
    return sorted(set(scopes))


def allows(granted: list[str], needed: str) -> bool:
    return "admin" in granted or needed in granted

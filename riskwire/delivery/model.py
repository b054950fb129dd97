"""Pure rules of alert delivery: who wants an alert (filters), how a webhook is signed and checked,
how long to wait before the next attempt, and which webhook addresses are refused.

Nothing here does I/O except ``check_webhook_url``, which resolves the host it is given (through a
resolver that tests replace).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import ipaddress
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from riskwire.exceptions import RiskwireError
from riskwire.settings import Settings


class DeliveryError(RiskwireError):
    """A delivery cannot be made as asked (refused address, bad subscription), with the reason."""


SEVERITIES = ("info", "warning", "critical")


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise DeliveryError(
            f"unknown severity {severity!r}; one of {', '.join(SEVERITIES)}"
        ) from None


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts a subscription wants; an empty list means any. Sectors are matched through a
    ticker -> sector mapping (``sector_of``)."""

    tickers: tuple[str, ...] = ()
    sectors: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    min_severity: str = "info"

    def __post_init__(self) -> None:
        severity_rank(self.min_severity)

    def matches(self, alert: Mapping[str, Any], sector_of: Mapping[str, str] | None = None) -> bool:
        if self.tickers and alert["ticker"] not in self.tickers:
            return False
        if self.sectors and (sector_of or {}).get(alert["ticker"]) not in self.sectors:
            return False
        if self.rules and alert["rule"] not in self.rules:
            return False
        return severity_rank(alert["severity"]) >= severity_rank(self.min_severity)


def load_sectors(path: Path | None) -> dict[str, str]:
    """A ticker -> sector mapping from a CSV with ``ticker`` and ``sector`` columns (None: empty)."""
    if path is None:
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DeliveryError(f"cannot read the sectors file {path}: {exc}") from exc
    if rows and not {"ticker", "sector"} <= set(rows[0]):
        raise DeliveryError(f"{path} needs 'ticker' and 'sector' columns")
    return {r["ticker"].strip().upper(): r["sector"].strip() for r in rows if r["ticker"].strip()}


def sector_map(settings: Settings) -> dict[str, str]:
    """Ticker -> sector for sector filters: ``RISKWIRE_SECTORS_FILE`` when set, else the sectors of
    the entity-linking reference table."""
    if settings.sectors_file is not None:
        return load_sectors(settings.sectors_file)
    from streams.pipeline.entities import ReferenceTable

    return ReferenceTable.load(settings.companies_file).sector_of()


def delivery_targets(settings: Settings) -> Any:
    """Where the alerts of a process with these settings go, besides webhook subscriptions."""
    from storage.delivery import Targets

    return Targets(
        grafana=settings.grafana_url is not None,
        alertmanager=settings.alertmanager_url is not None,
        sector_of=sector_map(settings),
    )


# --- webhook signatures ---------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Riskwire-Signature"
TIMESTAMP_HEADER = "X-Riskwire-Timestamp"
EVENT_HEADER = "X-Riskwire-Event"
DELIVERY_HEADER = "X-Riskwire-Delivery"
TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` + HMAC-SHA256 over ``"{timestamp}." + body``: a receiver that checks the timestamp
    is recent refuses a captured request replayed later, and the body cannot be altered."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """What a receiver does with a riskwire webhook: a valid signature over a recent timestamp."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        signature = lowered[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# --- retries --------------------------------------------------------------------------------------


def backoff_s(
    attempts: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds before attempt ``attempts + 1``: exponential from ``base_s``, capped at ``cap_s``, with
    full jitter on the upper half so receivers coming back are not hit by every sender at once."""
    ceiling = min(cap_s, base_s * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + (rng or random).random() * ceiling / 2


# --- webhook addresses ----------------------------------------------------------------------------

Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_webhook_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> None:
    """Refuse what a webhook must not reach unless allowed: anything but http(s), and hosts that
    resolve to private, loopback, link-local, multicast or reserved addresses (cloud metadata at
    169.254.169.254, the machine itself, the internal network). Checked when a subscription is
    saved and again before each delivery, since DNS answers can change."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"webhook URL {url!r} must be http(s)://host/...")
    if parts.username or parts.password:
        raise DeliveryError("webhook URL must not carry credentials; use the signing secret")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname, port)
    except OSError as exc:
        raise DeliveryError(f"webhook host {parts.hostname!r} does not resolve: {exc}") from exc
    if not addresses:
        raise DeliveryError(f"webhook host {parts.hostname!r} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
        ):
            raise DeliveryError(
                f"webhook host {parts.hostname!r} resolves to {ip}, a private, loopback or "
                "link-local address (set RISKWIRE_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
            )

"""The three destinations of a live alert event: webhooks (signed), Grafana annotations (through the
maintained ``grafana-client``) and Prometheus Alertmanager (``POST /api/v2/alerts``).

A sender returns what is worth keeping of the answer (a Grafana annotation id) or raises
``SendError``; ``permanent`` errors are not retried (a webhook address that became private).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from riskwire import __version__
from riskwire.delivery.model import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryError,
    check_webhook_url,
    sign,
)
from riskwire.exceptions import RiskwireError

USER_AGENT = f"riskwire/{__version__}"


class SendError(RiskwireError):
    """A delivery attempt failed; the message is kept as the delivery's last error."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass(frozen=True)
class Outgoing:
    """One delivery to attempt: the event (its feed position and the alert as JSON) and, for a
    webhook, the subscription's address and signing secret."""

    delivery_id: str
    target: str
    attempts: int
    event_id: str
    seq: int
    alert: dict[str, Any]
    url: str | None = None
    secret: str | None = None
    subscription_id: str | None = None


class Sender(Protocol):
    def send(self, item: Outgoing) -> dict[str, Any] | None: ...


def alert_link(public_url: str, alert: dict[str, Any]) -> str:
    return f"{public_url.rstrip('/')}/alerts/{alert['id']}"


def _ms(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


class WebhookSender:
    """POSTs the event as JSON, signed over a timestamp and the body (see ``model.sign``)."""

    def __init__(
        self,
        public_url: str,
        allow_private: bool,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.public_url = public_url
        self.allow_private = allow_private
        self.clock = clock
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def body(self, item: Outgoing) -> bytes:
        payload = {
            "event_id": item.event_id, "seq": item.seq, "delivery_id": item.delivery_id,
            "subscription_id": item.subscription_id, "state": item.alert["state"],
            "alert": item.alert, "link": alert_link(self.public_url, item.alert),
        }  # fmt: skip
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    def send(self, item: Outgoing) -> dict[str, Any] | None:
        if not item.url or not item.secret:
            raise SendError("the subscription has no URL or secret any more", permanent=True)
        try:
            check_webhook_url(item.url, self.allow_private)
        except DeliveryError as exc:
            raise SendError(str(exc), permanent=True) from exc
        body = self.body(item)
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: item.event_id,
            DELIVERY_HEADER: item.delivery_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(item.secret, timestamp, body),
        }
        try:
            answer = self.client.post(item.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from exc
        if not answer.is_success:
            raise SendError(f"HTTP {answer.status_code}: {answer.text[:300]}")
        return {"status": answer.status_code}

    def close(self) -> None:
        self.client.close()


class GrafanaSender:
    """An annotation per event: a region over the alert's window when it fires, a point when it
    resolves; tagged with ticker, rule and severity so dashboards can filter on them."""

    def __init__(self, url: str, token: str | None, public_url: str, timeout_s: float = 10.0):
        from grafana_client import GrafanaApi

        self.api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
        self.public_url = public_url

    @staticmethod
    def tags(alert: dict[str, Any]) -> list[str]:
        return [
            "riskwire",
            f"ticker:{alert['ticker']}",
            f"rule:{alert['rule']}",
            f"severity:{alert['severity']}",
            alert["state"],
        ]

    def send(self, item: Outgoing) -> dict[str, Any] | None:
        from grafana_client.client import GrafanaException

        alert = item.alert
        link = alert_link(self.public_url, alert)
        if alert["state"] == "firing":
            start, end = _ms(alert["window_start"]), _ms(alert["window_end"])
            text = f'{alert["explanation"]} <a href="{link}">details</a>'
        else:
            start = end = _ms(alert["event_time"])
            text = f'resolved: {alert["explanation"]} <a href="{link}">details</a>'
        try:
            answer = self.api.annotations.add_annotation(
                time_from=start, time_to=end, tags=self.tags(alert), text=text
            )
        except GrafanaException as exc:
            raise SendError(f"Grafana: {exc}") from exc
        except Exception as exc:  # connection errors come from niquests/urllib3
            raise SendError(f"Grafana unreachable: {type(exc).__name__}: {exc}") from exc
        return {"annotation_id": answer.get("id")} if isinstance(answer, dict) else None


class AlertmanagerSender:
    """Posts alerts to Alertmanager's API v2. A firing alert is valid for ``4 * resend_s`` and is
    re-asserted every ``resend_s`` while it fires (as Prometheus does); a resolved one ends at its
    resolution time."""

    def __init__(self, url: str, public_url: str, resend_s: float, timeout_s: float = 10.0):
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.public_url = public_url
        self.resend_s = resend_s
        self.client = httpx.Client(timeout=timeout_s)

    def payload(self, alert: dict[str, Any], now: datetime) -> dict[str, Any]:
        if alert["state"] == "firing":
            ends = now + timedelta(seconds=4 * self.resend_s)
        else:
            ends = datetime.fromisoformat(alert["event_time"])
        return {
            "labels": {
                "alertname": alert["rule"], "ticker": alert["ticker"],
                "severity": alert["severity"], "alert_id": alert["id"], "source": "riskwire",
            },
            "annotations": {
                "summary": f"{alert['ticker']}: {alert['rule']} ({alert['severity']})",
                "description": alert["explanation"],
            },
            "startsAt": alert["window_end"],
            "endsAt": ends.isoformat(),
            "generatorURL": alert_link(self.public_url, alert),
        }  # fmt: skip

    def post(self, alerts: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        try:
            answer = self.client.post(self.url, json=[self.payload(a, now) for a in alerts])
        except httpx.HTTPError as exc:
            raise SendError(f"Alertmanager unreachable: {type(exc).__name__}: {exc}") from exc
        if not answer.is_success:
            raise SendError(f"Alertmanager HTTP {answer.status_code}: {answer.text[:300]}")

    def send(self, item: Outgoing) -> dict[str, Any] | None:
        self.post([item.alert])
        return None

    def close(self) -> None:
        self.client.close()

"""The outbox dispatcher: claims due deliveries, sends them concurrently, and records each outcome
(delivered; retried with exponential backoff; dead after ``delivery_max_attempts`` with the reason).

It runs in the API process (``deliver_in_api``) or alone (``riskwire deliver``). Claims are leases:
a dispatcher that dies mid-send leaves its deliveries to be retried when the lease ends, so delivery
is at least once; receivers deduplicate on the ``X-Riskwire-Delivery`` header. On PostgreSQL several
dispatchers can run (claims skip locked rows).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.delivery.model import backoff_s
from riskwire.delivery.senders import (
    AlertmanagerSender,
    GrafanaSender,
    Outgoing,
    Sender,
    SendError,
    WebhookSender,
)
from riskwire.service_metrics import ServiceMetrics
from riskwire.settings import Settings
from storage import delivery as store
from storage.tables import AlertEventRow, AlertRow

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=2)


def senders_for(settings: Settings) -> dict[str, Sender]:
    """The senders the settings configure: webhooks always, Grafana and Alertmanager when set."""
    senders: dict[str, Sender] = {
        store.WEBHOOK: WebhookSender(
            settings.public_url, settings.webhook_allow_private, settings.webhook_timeout_s
        )
    }
    if settings.grafana_url:
        senders[store.GRAFANA] = GrafanaSender(
            settings.grafana_url, settings.grafana_token, settings.public_url
        )
    if settings.alertmanager_url:
        senders[store.ALERTMANAGER] = AlertmanagerSender(
            settings.alertmanager_url, settings.public_url, settings.alertmanager_resend_s
        )
    return senders


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        senders: Mapping[str, Sender] | None = None,
        batch: int = 200,
        workers: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.sessions = sessions
        self.senders = dict(senders) if senders is not None else senders_for(settings)
        self.batch = batch
        self.clock = clock
        self.pool = ThreadPoolExecutor(
            workers or settings.delivery_concurrency, thread_name_prefix="deliver"
        )
        self.rng = random.Random()
        self._last_resend = 0.0

    def run_once(self) -> int:
        """Attempt every delivery due now (up to ``batch``); returns how many were attempted."""
        now = self.clock()
        with self.sessions.begin() as session:
            claimed = store.claim_due(session, now, self.batch, LEASE)
            items = [self._outgoing(d, e, s) for d, e, s in claimed]
        if not items:
            return 0
        outcomes = list(self.pool.map(self._attempt, items))
        now = self.clock()
        with self.sessions.begin() as session:
            results = list(zip(items, outcomes, strict=True))
            store.mark_delivered(
                session, [(i.delivery_id, r) for i, (r, error) in results if error is None], now
            )
            for item, (_, error) in results:
                if error is None:
                    self.metrics.attempts.labels(item.target, "delivered").inc()
                    continue
                retry = self._retry_in(item, error)
                status = store.mark_failed(session, item.delivery_id, now, str(error), retry)
                outcome = {store.DEAD: "dead", store.PENDING: "retry"}.get(status, status)
                self.metrics.attempts.labels(item.target, outcome).inc()
                log.log(
                    logging.WARNING if status == store.DEAD else logging.INFO,
                    "delivery %s to %s failed (attempt %d): %s%s",
                    item.delivery_id, item.target, item.attempts + 1, error,
                    "; gave up" if status == store.DEAD else "",
                )  # fmt: skip
        return len(items)

    def _retry_in(self, item: Outgoing, error: SendError) -> timedelta | None:
        if error.permanent or item.attempts + 1 >= self.settings.delivery_max_attempts:
            return None
        delay = backoff_s(
            item.attempts + 1,
            self.settings.delivery_backoff_s,
            self.settings.delivery_backoff_cap_s,
            self.rng,
        )
        return timedelta(seconds=delay)

    def _attempt(self, item: Outgoing) -> tuple[dict[str, Any] | None, SendError | None]:
        sender = self.senders.get(item.target)
        if sender is None:
            return None, SendError(f"no {item.target} destination is configured", permanent=True)
        try:
            with self.metrics.send_seconds.labels(item.target).time():
                return sender.send(item), None
        except SendError as exc:
            return None, exc
        except Exception as exc:  # a bug costs one attempt, never the dispatcher
            log.exception("delivery %s crashed", item.delivery_id)
            return None, SendError(f"unexpected {type(exc).__name__}: {exc}")

    @staticmethod
    def _outgoing(delivery: Any, event: AlertEventRow, subscription: Any) -> Outgoing:
        active = subscription is not None and subscription.active
        return Outgoing(
            delivery_id=delivery.id, target=delivery.target, attempts=delivery.attempts,
            event_id=event.id, seq=event.seq, alert=event.alert,
            url=subscription.url if active else None,
            secret=subscription.secret if active else None,
            subscription_id=delivery.subscription_id,
        )  # fmt: skip

    def resend_firing(self) -> int:
        """Re-assert every live alert still firing to Alertmanager, which otherwise resolves it once
        its ``endsAt`` passes. Not an outbox delivery: the next round repeats it anyway."""
        sender = self.senders.get(store.ALERTMANAGER)
        if not isinstance(sender, AlertmanagerSender):
            return 0
        with self.sessions() as session:
            firing = session.scalars(
                select(AlertRow.id).where(AlertRow.run_id == "live", AlertRow.state == "firing")
            ).all()
            events = session.scalars(
                select(AlertEventRow).where(
                    AlertEventRow.alert_id.in_(firing), AlertEventRow.state == "firing"
                )
            ).all() if firing else []  # fmt: skip
            alerts = [e.alert for e in events]
        if alerts:
            try:
                sender.post(alerts)
            except SendError as exc:
                log.info("re-asserting %d firing alerts failed: %s", len(alerts), exc)
                return 0
        return len(alerts)

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set: at once while work is due, else every ``delivery_poll_s``."""
        while not stop.is_set():
            try:
                attempted = self.run_once()
                if time.monotonic() - self._last_resend >= self.settings.alertmanager_resend_s:
                    self._last_resend = time.monotonic()
                    self.resend_firing()
            except Exception:  # the database may be away for a while: wait and try again
                log.exception("delivery round failed")
                attempted = 0
            if not attempted:
                stop.wait(self.settings.delivery_poll_s)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for sender in self.senders.values():
            close = getattr(sender, "close", None)
            if close is not None:
                close()


def start_in_thread(dispatcher: Dispatcher) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="dispatcher", daemon=True)
    thread.start()
    return thread, stop

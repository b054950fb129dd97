"""The Faust app and its settings wiring; each flow registers its own topics and agents."""

from __future__ import annotations

import logging
from collections.abc import Callable

import faust

from models.ensemble import Ensemble
from riskwire.kafka_security import faust_credentials
from riskwire.settings import Settings
from streams.context import WorkerContext
from streams.metrics import METRICS, consumer_lag
from streams.transport import RiskwireApp

log = logging.getLogger(__name__)
FLOWS = ("streams.normalising", "streams.scoring", "streams.risk", "streams.deadletters")


def create_app(
    settings: Settings, ensemble_factory: Callable[[], Ensemble] | None = None
) -> tuple[faust.App, WorkerContext]:
    if settings.kafka_bootstrap is None:
        raise ValueError("create_app needs a broker: set RISKWIRE_KAFKA_BOOTSTRAP")
    faust_dir = settings.data_dir / "faust" / settings.consumer_group
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = RiskwireApp(
        settings.consumer_group,
        fetch_wait_ms=settings.kafka_fetch_wait_ms,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),  # TLS, SASL: riskwire/kafka_security.py
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        # Tansu holds JoinGroup for half the session timeout: keep it short (KAFKA_NOTES.md)
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        # Faust's own folder (it makes one even with in-memory tables): under the data folder,
        # not in whatever directory the worker was started from
        datadir=str(faust_dir),
        # the risk stage holds messages until their event time comes (streams/risk.py): waiting
        # for every message to be acknowledged would stall rebalances and shutdown
        stream_wait_empty=False,
    )
    context = WorkerContext(settings, ensemble_factory)
    import importlib

    for flow in FLOWS:
        importlib.import_module(flow).register(app, context)

    @app.timer(interval=1.0)
    async def heartbeat() -> None:  # /healthz and a metric: the event loop turns
        METRICS.beat()

    if settings.model_reload_s > 0:

        @app.timer(interval=settings.model_reload_s)
        async def reload_models() -> None:  # a refit promoted while the worker runs
            try:
                await context.reload_models()
            except Exception:  # the running models go on whatever happens here
                log.exception("looking for changed models failed")

    METRICS.probes.add(
        "riskwire_consumer_lag", "gauge", "Messages of a partition this worker is assigned that "
        "its group has not committed: the high watermark minus the committed offset",
        ["topic", "partition"], lambda: consumer_lag(app),
    )  # fmt: skip
    return app, context

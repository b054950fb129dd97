"""Fixtures of the delivery tests: a migrated database, keys and subscriptions, local servers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.settings import Settings, load_settings
from storage import make_engine, session_factory, upgrade
from storage.tables import ApiKeyRow, DeliveryRow, SubscriptionRow
from tests.delivery.servers import Alertmanager, FakeGrafana, Receiver


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    upgrade(database_url)
    return load_settings(
        database_url=database_url, data_dir=tmp_path, webhook_allow_private=True,
        delivery_backoff_s=0.05, delivery_backoff_cap_s=0.2, delivery_max_attempts=5,
        delivery_poll_s=0.05,
    )  # fmt: skip


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.resolved_database_url)
    yield session_factory(engine)
    engine.dispose()


def add_key(sessions: sessionmaker[Session], key_id: str = "k1") -> str:
    with sessions.begin() as session:
        session.add(
            ApiKeyRow(
                id=key_id, name=key_id, secret_hash="0" * 64, scopes=["admin"],
                created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    return key_id


def add_subscription(
    sessions: sessionmaker[Session], sid: str, url: str | None, key_id: str = "k1", **fields: object
) -> SubscriptionRow:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "id": sid, "api_key_id": key_id, "name": sid, "channel": "webhook" if url else "sse",
        "url": url, "secret": f"secret-{sid}" if url else None, "tickers": [], "sectors": [],
        "rules": [], "min_severity": "info", "active": True, "created_at": now, "updated_at": now,
    }  # fmt: skip
    values.update(fields)
    row = SubscriptionRow(**values)
    with sessions.begin() as session:
        session.add(row)
    return row


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    yield server
    server.close()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    try:
        server = Alertmanager(tmp_path_factory.mktemp("alertmanager"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


def deliveries(sessions: sessionmaker[Session]) -> list[DeliveryRow]:
    """Every delivery row, oldest first, detached from its session."""
    with sessions() as session:
        rows = list(session.scalars(select(DeliveryRow).order_by(DeliveryRow.created_at)))
        session.expunge_all()
        return rows

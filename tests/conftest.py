"""Session fixtures for the real services: the Tansu broker and PostgreSQL, and factories on them."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from riskwire.broker import EmbeddedBroker
from storage.engine import fresh_database

log = logging.getLogger(__name__)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RISKWIRE_* variable and no .env file of the developer's reach the settings."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RISKWIRE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def _answers(url: str) -> bool:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception as exc:  # any failure means: not usable here
        log.info("no PostgreSQL at %s: %s", url, exc)
        return False


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server to create test databases on: the configured one, else a throw-away one."""
    url = os.environ.get("RISKWIRE_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    if _answers(url):
        yield url
        return
    try:
        import pgserver
    except ImportError:
        pytest.fail(f"no PostgreSQL at {url} and pgserver is not installed (pip install pgserver)")
    datadir = Path(tempfile.mkdtemp(prefix="riskwire-pg-"))
    server = pgserver.get_server(datadir, cleanup_mode="stop")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={datadir}"
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database of this test's own on the PostgreSQL server, dropped afterwards."""
    with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'riskwire.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each storage test runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))

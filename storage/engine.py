"""Engines and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "options" not in parsed.query:
        kwargs.setdefault("connect_args", {}).setdefault("options", NO_JIT)
    return create_engine(url, **{"pool_pre_ping": True, **kwargs})


# PostgreSQL compiles a statement to machine code (JIT) once its estimated cost passes
# ``jit_above_cost``, and estimates are high for tables that grew since their last ANALYZE: the
# story index's lookup of a batch's band keys, 4 ms of execution, spent 15-27 ms compiling in a
# fresh database. Nothing riskwire sends runs long enough to win that back. A URL with its own
# ``options`` keeps them.
NO_JIT = "-c jit=off"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "PRAGMA journal_mode=WAL"
    )  # readers (the demo, dashboards) never block the worker
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def fresh_database(admin_url: str, prefix: str = "riskwire_test") -> Iterator[str]:
    """A new database on the PostgreSQL server at ``admin_url``, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

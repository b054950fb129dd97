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


def make_engine(url: str, idle_transaction_s: float | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``. On PostgreSQL, ``idle_transaction_s`` (>0) has the server end a
    connection of this engine that sits that long in the middle of a transaction, and with it the
    transaction and its row locks (``idle_in_transaction_session_timeout``). Without it, a client
    paused mid-transaction (a stop-the-world pause, SIGSTOP), or whose host went away without
    closing its connections (TCP notices after about two hours), keeps its locks all that time.
    SQLite ignores it: its connections are in the process, and go with it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "options" not in parsed.query:
        kwargs.setdefault("connect_args", {}).setdefault("options", NO_JIT)
    engine = create_engine(url, **{"pool_pre_ping": True, **kwargs})
    if idle_transaction_s:
        limit_ms = max(1, round(idle_transaction_s * 1000))

        def limit_idle_transactions(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:  # a session setting, whatever the URL sets
                cursor.execute(f"SET idle_in_transaction_session_timeout = {limit_ms}")
            dbapi_connection.commit()

        event.listen(engine, "connect", limit_idle_transactions)
    return engine


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

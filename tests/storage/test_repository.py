"""The same storage tests on SQLite and PostgreSQL: migrations, idempotent upserts, UTC round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import Alert, AlertState, DeadLetter, Severity
from storage import make_engine
from storage.base import Base
from storage.migrate import downgrade, upgrade
from storage.repository import (
    COPY_FROM,
    count_rows,
    insert_dead_letters,
    refresh_statistics,
    register_model_versions,
    ticker_summary,
    upsert_aggregates,
    upsert_alerts,
    upsert_documents,
    upsert_scores,
    upsert_ticker_sentiment,
)
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    DocumentTickerRow,
    ModelVersionRow,
    RiskAggregateRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)
from tests.factories import T0, make_document, make_score

TABLES = set(Base.metadata.tables)  # every table the models declare


def make_alert(state: AlertState = AlertState.FIRING, **overrides: object) -> Alert:
    fields: dict[str, object] = {
        "id": "a" * 32, "rule": "negative_surge", "ticker": "ACME", "severity": Severity.WARNING,
        "state": state, "window_start": T0, "window_end": T0 + timedelta(hours=2),
        "event_time": T0 + timedelta(hours=2), "values": {"documents": 5.0},
        "thresholds": {"min_documents": 4.0}, "evidence": ("d1", "d2"), "explanation": "test",
    }  # fmt: skip
    fields.update(overrides)
    return Alert(**fields)  # type: ignore[arg-type]


def test_migration_creates_every_table_and_downgrades_cleanly(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    indexes = {i["name"] for i in inspect(engine).get_indexes("document_tickers")}
    assert "ix_document_tickers_ticker_published_at" in indexes
    downgrade(database_url)
    assert not TABLES & set(inspect(engine).get_table_names())
    engine.dispose()


def test_the_migrated_schema_is_the_one_the_models_declare(database_url: str) -> None:
    """Alembic's own comparison of the migrated database with the models: tables, columns, types,
    nullability, keys and indexes, so a migration cannot drift from ``storage/tables.py``."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert differences == []


def test_migrations_build_the_indexes_the_models_declare(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    inspector = inspect(engine)
    postgres = engine.dialect.name == "postgresql"

    def method(options: dict[str, object]) -> object:  # B-tree unless said (PostgreSQL only)
        return (options.get("postgresql_using") or "btree") if postgres else None

    for table in Base.metadata.sorted_tables:
        migrated = {
            i["name"]: (tuple(i["column_names"]), method(i.get("dialect_options", {})))
            for i in inspector.get_indexes(table.name)
            if not i.get("unique")
        }
        declared = {
            i.name: (tuple(c.name for c in i.columns), method(i.dialect_kwargs))
            for i in table.indexes
            if not i.unique
        }
        assert migrated == declared, table.name
    if postgres:  # the story tables' pruning indexes are the cheap kind
        pruning = {i["name"]: i for i in inspector.get_indexes("story_keys")}
        assert method(pruning["ix_story_keys_started_at"]["dialect_options"]) == "brin"
    engine.dispose()


def test_documents_upsert_is_idempotent(sessions: sessionmaker[Session]) -> None:
    docs = [make_document() for _ in range(3)]
    for _ in range(2):  # a redelivered batch
        with sessions.begin() as session:
            upsert_documents(session, docs + docs[:1])  # and a duplicate inside one batch
    with sessions() as session:
        assert count_rows(session, DocumentRow) == 3
        assert count_rows(session, DocumentTickerRow) == 3


def test_scores_and_votes_are_stored_once_per_document_and_version(
    sessions: sessionmaker[Session],
) -> None:
    doc = make_document()
    score = make_score(document_id=doc.id, published_at=doc.published_at)
    fanned = [score.model_copy(update={"ticker": t}) for t in ("ACME", "BETA")]
    with sessions.begin() as session:
        upsert_documents(session, [doc])
        upsert_scores(session, fanned)
    with sessions.begin() as session:
        upsert_scores(session, [score])
    with sessions() as session:
        row = session.scalars(select(ScoreRow)).one()
        assert row.document_id == doc.id and row.model_version == "test-1"
        assert row.score == pytest.approx(score.score)
        assert count_rows(session, VoteRow) == 1


def test_datetimes_come_back_timezone_aware_utc(sessions: sessionmaker[Session]) -> None:
    cet = datetime(2026, 11, 2, 10, 30, tzinfo=UTC).astimezone()  # any zone in
    doc = make_document(published_at=cet)
    with sessions.begin() as session:
        upsert_documents(session, [doc])
    with sessions() as session:
        stored = session.get(DocumentRow, doc.id)
        assert stored is not None
        assert stored.published_at.tzinfo is not None
        assert stored.published_at == datetime(2026, 11, 2, 10, 30, tzinfo=UTC)


def test_alert_fires_once_and_resolves(sessions: sessionmaker[Session]) -> None:
    firing = make_alert()
    with sessions.begin() as session:
        upsert_alerts(session, [firing, firing])
    with sessions.begin() as session:
        upsert_alerts(session, [firing])  # redelivered
    resolved_at = T0 + timedelta(hours=3)
    with sessions.begin() as session:
        upsert_alerts(session, [make_alert(AlertState.RESOLVED, event_time=resolved_at)])
    with sessions() as session:
        row = session.scalars(select(AlertRow)).one()
        assert row.state == "resolved"
        assert row.resolved_at == resolved_at
        assert row.evidence == ["d1", "d2"] and row.measured == {"documents": 5.0}
    with sessions.begin() as session:
        upsert_alerts(session, [firing])  # a late redelivery of the firing event changes nothing
    with sessions() as session:
        assert session.scalars(select(AlertRow.state)).one() == "resolved"


def test_dead_letters_are_deduplicated(sessions: sessionmaker[Session]) -> None:
    letter = DeadLetter.of(
        "normalise",
        "payload has no title or text",
        b'{"id": 1}',
        occurred_at=T0,
        topic="raw",
        key=b"k",
    )
    with sessions.begin() as session:
        insert_dead_letters(session, [letter, letter])
    with sessions.begin() as session:
        insert_dead_letters(session, [letter])
    with sessions() as session:
        row = session.scalars(select(DeadLetterRow)).one()
        assert (row.stage, row.reason, row.payload, row.key) == (
            "normalise",
            "payload has no title or text",
            '{"id": 1}',
            "k",
        )


def test_ticker_summary_counts_documents_scores_and_alerts(sessions: sessionmaker[Session]) -> None:
    docs = [make_document() for _ in range(4)]
    scores = [
        make_score(document_id=d.id, score=s, published_at=d.published_at)
        for d, s in zip(docs, (-0.5, -0.3, 0.2, 0.6), strict=True)
    ]
    rows = [{"run_id": "live", "ticker": "ACME", "document_id": d.id,
             "published_at": d.published_at, "score": s.score, "window_documents": 1,
             "window_mean_score": s.score, "window_negative_share": 0.0}
            for d, s in zip(docs, scores, strict=True)]  # fmt: skip
    with sessions.begin() as session:
        upsert_documents(session, docs)
        upsert_scores(session, scores)
        upsert_ticker_sentiment(session, rows + rows)
        upsert_alerts(session, [make_alert()])
    with sessions() as session:
        assert count_rows(session, TickerSentimentRow) == 4
        (summary,) = ticker_summary(session)
    assert (summary.ticker, summary.documents, summary.alerts) == ("ACME", 4, 1)
    assert summary.mean_score == pytest.approx(0.0)


def test_naive_datetimes_are_refused(sessions: sessionmaker[Session]) -> None:
    letter = DeadLetter.of("x", "y", "z", occurred_at=T0)
    row = {
        "id": letter.id,
        "stage": "x",
        "reason": "y",
        "topic": None,
        "key": None,
        "payload": "z",
        "occurred_at": datetime(2026, 1, 1),  # noqa: DTZ001
    }
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as session:
        session.execute(DeadLetterRow.__table__.insert(), [row])


def _sentiment_rows(n: int, **overrides: object) -> list[dict[str, object]]:
    return [
        {
            "run_id": "live", "ticker": f"T{i % 7}", "document_id": f"{i:032x}",
            "published_at": T0 + timedelta(seconds=i), "score": i / n, "window_documents": i,
            "window_mean_score": -i / n, "window_negative_share": 0.5, **overrides,
        }
        for i in range(n)
    ]  # fmt: skip


def test_large_batches_are_stored_once_with_their_values(sessions: sessionmaker[Session]) -> None:
    """Past COPY_FROM rows PostgreSQL writes through COPY and a staging table: same contract."""
    rows = _sentiment_rows(COPY_FROM + 500)
    with sessions.begin() as session:
        upsert_ticker_sentiment(session, rows)
        upsert_ticker_sentiment(session, rows[:COPY_FROM])  # again, in the same transaction
    with sessions.begin() as session:
        upsert_ticker_sentiment(session, rows)  # redelivered
    alerts = [make_alert(id=f"a{i}", values={"documents": float(i)}) for i in range(COPY_FROM)]
    with sessions.begin() as session:
        upsert_alerts(session, alerts)
        upsert_alerts(session, alerts)
    with sessions() as session:
        assert count_rows(session, TickerSentimentRow) == len(rows)
        key = ("live", rows[-1]["ticker"], rows[-1]["document_id"])
        last = session.get(TickerSentimentRow, key)
        assert last is not None and last.published_at == rows[-1]["published_at"]
        assert last.published_at.tzinfo is not None
        assert last.window_mean_score == pytest.approx(-(len(rows) - 1) / len(rows))
        assert count_rows(session, AlertRow) == COPY_FROM
        stored = session.get(AlertRow, "a7")
        assert stored is not None and stored.measured == {"documents": 7.0}
        assert stored.evidence == ["d1", "d2"]


def _aggregate_rows(n: int, documents: int) -> list[dict[str, object]]:
    return [
        {
            "run_id": "live", "ticker": f"T{i}", "window_minutes": 15, "window_start": T0,
            "group_kind": "ticker", "window_end": T0 + timedelta(minutes=15),
            "documents": documents, "mean_score": -0.5, "negative_share": 0.5,
            "dispersion": 0.1, "disagreement": 0.2, "sentiment_z": None, "volume_z": float(i),
        }
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("n", [1, COPY_FROM, 3 * COPY_FROM])
def test_aggregates_are_rewritten_with_their_latest_values(
    sessions: sessionmaker[Session], n: int
) -> None:
    """Small and large batches (COPY on PostgreSQL), a window rewritten in the same transaction
    and in a later one: one row per window, with the values written last."""
    with sessions.begin() as session:
        upsert_aggregates(session, _aggregate_rows(n, documents=1))
        upsert_aggregates(session, _aggregate_rows(n, documents=2))
    with sessions.begin() as session:
        upsert_aggregates(session, _aggregate_rows(n, documents=3))
    with sessions() as session:
        rows = session.scalars(select(RiskAggregateRow)).all()
        assert len(rows) == n
        assert {r.documents for r in rows} == {3}
        last = session.get(RiskAggregateRow, ("live", f"T{n - 1}", 15, T0))
        assert last is not None and last.volume_z == n - 1 and last.sentiment_z is None
        assert last.window_end == T0 + timedelta(minutes=15)


def test_sqlite_binds_datetimes_as_sqlalchemy_does() -> None:
    """The SQLite bulk path formats datetimes itself; SQLite compares them as text, so they must be
    exactly what SQLAlchemy's binding writes (a row written either way sorts among the others)."""
    from sqlalchemy.dialects import sqlite

    from storage.base import UtcDateTime
    from storage.repository import _sqlite_utc

    dialect = sqlite.dialect()
    core = UtcDateTime()
    bind = core.impl_instance._cached_bind_processor(dialect)
    assert bind is not None
    tokyo = timezone(timedelta(hours=9))
    for value in (T0, T0 + timedelta(microseconds=7), datetime(2026, 3, 1, 23, 59, 59, 999999,
                  tzinfo=UTC), datetime(2026, 3, 2, 8, 0, tzinfo=tokyo), None):  # fmt: skip
        assert _sqlite_utc(value) == bind(core.process_bind_param(value, dialect))
    with pytest.raises(ValueError, match="naive datetime"):
        _sqlite_utc(datetime(2026, 1, 1))  # noqa: DTZ001


def test_rows_stored_by_the_bulk_path_and_by_core_are_read_alike(
    sessions: sessionmaker[Session],
) -> None:
    """Rows stored in batches of different sizes (on PostgreSQL a large one through COPY, one row
    through Core; on SQLite both by the driver's executemany) read back alike, the column default
    filled, and range queries over datetimes see all of them."""
    rows = _sentiment_rows(40)
    with sessions.begin() as session:
        upsert_ticker_sentiment(session, rows[:39])
        upsert_ticker_sentiment(session, rows[39:])
        upsert_ticker_sentiment(session, rows)  # again: nothing doubles
    with sessions() as session:
        stored = session.scalars(
            select(TickerSentimentRow).order_by(TickerSentimentRow.published_at)
        ).all()
        assert [r.document_id for r in stored] == [r["document_id"] for r in rows]
        assert all(r.late is False for r in stored)
        assert stored[39].published_at == T0 + timedelta(seconds=39)
        later = select(TickerSentimentRow.document_id).where(
            TickerSentimentRow.published_at >= T0 + timedelta(seconds=30)
        )
        assert len(session.scalars(later).all()) == 10


def test_large_batches_refuse_naive_datetimes_too(sessions: sessionmaker[Session]) -> None:
    rows = _sentiment_rows(COPY_FROM, published_at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as session:
        upsert_ticker_sentiment(session, rows)
    with sessions() as session:
        assert count_rows(session, TickerSentimentRow) == 0


def test_stale_planner_statistics_are_refreshed_on_postgresql(
    sessions: sessionmaker[Session],
) -> None:
    """A bulk load leaves PostgreSQL planning for empty tables unless they are analysed."""
    docs = [make_document() for _ in range(200)]
    with sessions.begin() as session:
        upsert_documents(session, docs)
    with sessions.begin() as session:
        refreshed = refresh_statistics(session)
    with sessions.begin() as session:
        again = refresh_statistics(session)
    if session.get_bind().dialect.name == "postgresql":
        assert "documents" in refreshed and "documents" not in again
    else:
        assert refreshed == again == []


def test_model_versions_are_registered_once(sessions: sessionmaker[Session]) -> None:
    entries = [
        ("default", "default-1", {"kind": "ensemble", "members": ["a-1"]}),
        ("a", "a-1", {"kind": "lexicon", "terms": 3}),
    ]
    with sessions.begin() as session:
        register_model_versions(session, entries, T0)
    with sessions.begin() as session:
        register_model_versions(session, entries[:1], T0 + timedelta(days=1))
    with sessions() as session:
        rows = session.scalars(select(ModelVersionRow).order_by(ModelVersionRow.version)).all()
    assert [(r.version, r.kind, r.registered_at) for r in rows] == [
        ("a-1", "lexicon", T0),
        ("default-1", "ensemble", T0),
    ]
    assert rows[1].description == {"kind": "ensemble", "members": ["a-1"]}

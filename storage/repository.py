"""Repository functions: batched, idempotent writes keyed on natural ids, and the reads riskwire needs.

They take a ``Session`` and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
from sqlalchemy import (
    JSON,
    Connection,
    Insert,
    String,
    Table,
    case,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from riskwire.records import (
    Alert,
    AlertState,
    DeadLetter,
    Document,
    Score,
    Severity,
    group_kind,
)
from storage.base import Base, UtcDateTime
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    DocumentTickerRow,
    GroupSentimentRow,
    ModelVersionRow,
    RiskAggregateRow,
    RuleSetRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)

CHUNK = 500  # rows per executemany


def _insert(session: Session, table: type[Base]) -> Insert:
    """The dialect's INSERT, which has ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {dialect!r}")


def _insert_ignore(session: Session, table: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, executed on the session's connection as Core (the ORM's
    bulk path costs several times more per row and adds nothing here); on PostgreSQL, batches of
    ``COPY_FROM`` rows or more go through COPY."""
    if not rows:
        return
    connection = session.connection()
    if _copies(connection, rows):
        _copy_in(connection, table, rows, "DO NOTHING")
        return
    if connection.dialect.name == "sqlite" and _sqlite_insert(
        connection, table, rows, "DO NOTHING"
    ):
        return
    stmt = _insert(session, table).on_conflict_do_nothing()  # type: ignore[attr-defined]
    for start in range(0, len(rows), CHUNK):
        connection.execute(stmt, list(rows[start : start + CHUNK]))


# Rows from which PostgreSQL writes through COPY. Measured on the worker's batches (64 documents,
# 5 votes each): client CPU 150 -> 70 us a document, server 126 -> 106 us. Below it, the three
# statements COPY costs are more than an executemany's few rows.
COPY_FROM = 16


def _copies(connection: Connection, rows: Sequence[object]) -> bool:
    """Whether these rows go through ``_copy_in``: PostgreSQL, enough of them, and a transaction
    (in autocommit the staging table would be emptied before its rows were inserted)."""
    if connection.dialect.name != "postgresql" or len(rows) < COPY_FROM:
        return False
    return not cast(psycopg.Connection[Any], connection.connection.dbapi_connection).autocommit


def _copy_in(
    connection: Connection, table: type[Base], rows: Sequence[dict[str, Any]], conflict: str
) -> None:
    """PostgreSQL: COPY the rows into a temporary table shaped like ``table`` (without its
    constraints), then one INSERT … SELECT … ON CONFLICT ``conflict``. psycopg 3 runs an
    executemany as one statement per row, and SQLAlchemy does not batch an INSERT that has ON
    CONFLICT into multi-row VALUES: this costs a fraction of either, in the client and in the
    server. The rows must not repeat a key when ``conflict`` updates."""
    target = cast(Table, table.__table__)
    columns = list(rows[0])
    convert = [_copy_converter(target.c[name].type) for name in columns]
    names = ", ".join(f'"{name}"' for name in columns)
    stage = f"stage_{target.name}"
    dbapi = cast(psycopg.Connection[Any], connection.connection.dbapi_connection)
    with _driver_errors(connection, f'COPY "{target.name}"'), dbapi.cursor() as cursor:
        cursor.execute(  # emptied at each commit, in place (a TRUNCATE would cost a new file)
            f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" ON COMMIT DELETE ROWS AS '
            f'SELECT * FROM "{target.name}" WITH NO DATA'
        )
        with cursor.copy(f'COPY "{stage}" ({names}) FROM STDIN') as copy:
            for row in rows:
                if len(row) != len(columns):
                    raise ValueError(f"{target.name}: rows of one batch must have the same columns")
                copy.write_row([f(row[name]) for f, name in zip(convert, columns, strict=True)])
        cursor.execute(
            f'INSERT INTO "{target.name}" ({names}) SELECT {names} FROM "{stage}" '
            f"ON CONFLICT {conflict}"
        )
        if conflict != "DO NOTHING":  # staged again in this transaction, a row would update twice
            cursor.execute(f'DELETE FROM "{stage}"')
        # (DO NOTHING: rows staged again in this transaction are offered again; nothing happens)


def _sqlite_insert(
    connection: Connection, table: type[Base], rows: Sequence[dict[str, Any]], conflict: str
) -> bool:
    """SQLite: one INSERT … ON CONFLICT ``conflict`` run as the driver's executemany over tuples,
    each value bound as SQLAlchemy would bind it (its own processors; UTC datetimes in its storage
    format, by ``_sqlite_utc``), missing columns given their scalar defaults. Through Core, building
    each row's parameters cost more than SQLite spent storing it (a replay stores four rows a
    document). Runs in the session's transaction, on its connection. False, having done nothing,
    where a missing column's default is not a constant (Core must compute it)."""
    target = cast(Table, table.__table__)
    columns = list(rows[0])
    dialect = connection.dialect
    defaults = []
    for column in target.c:
        if column.name not in rows[0] and column.default is not None:
            if not column.default.is_scalar:  # a callable or SQL default: Core computes it
                return False
            defaults.append(column)
    convert = [_sqlite_converter(target.c[name].type, dialect) for name in columns]
    tail = tuple(_sqlite_bound(d, d.default.arg, dialect) for d in defaults)  # type: ignore[union-attr]
    names = ", ".join(f'"{name}"' for name in [*columns, *(d.name for d in defaults)])
    marks = ", ".join("?" * (len(columns) + len(defaults)))
    processed = [(i, f) for i, f in enumerate(convert) if f is not None]
    values = []
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{target.name}: rows of one batch must have the same columns")
        value = [row[name] for name in columns]
        for i, f in processed:
            value[i] = f(value[i])
        values.append((*value, *tail))
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    statement = f'INSERT INTO "{target.name}" ({names}) VALUES ({marks}) ON CONFLICT {conflict}'
    with _driver_errors(connection, statement):
        cursor = dbapi.cursor()
        try:
            cursor.executemany(statement, values)
        finally:
            cursor.close()
    return True


@contextmanager
def _driver_errors(connection: Connection, statement: str) -> Iterator[None]:
    """Raise what the driver raises on its own cursor as SQLAlchemy would have, had the statement
    gone through it: a ``DBAPIError`` (a ``StatementError`` for an error of Python's, such as text
    that cannot be encoded), its connection invalidated when it was lost. The callers tell a
    database to wait for (``streams.context``) from a row it refuses by these, and a lost
    connection left in the pool would fail the next transaction too."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, DBAPIError):
            raise
        dialect = connection.dialect
        base = dialect.loaded_dbapi.Error
        lost = isinstance(exc, base) and dialect.is_disconnect(
            exc, connection.connection.dbapi_connection, None
        )
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, base, connection_invalidated=lost, dialect=dialect
        ) from exc


def _sqlite_bound(column: Any, value: Any, dialect: Any) -> Any:
    convert = _sqlite_converter(column.type, dialect)
    return value if convert is None else convert(value)


def _sqlite_converter(kind: Any, dialect: Any) -> Callable[[Any], Any] | None:
    if isinstance(kind, UtcDateTime):
        return _sqlite_utc
    return cast(Callable[[Any], Any] | None, kind._cached_bind_processor(dialect))


def _sqlite_utc(value: datetime | None) -> str | None:
    """``UtcDateTime``'s bind processing then SQLAlchemy's SQLite storage format, at a fraction of
    the cost: naive datetimes refused, aware ones as UTC, always with six decimals."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} refused: riskwire stores UTC only")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    text_ = value.replace(tzinfo=None).isoformat(" ")
    return text_ if value.microsecond else text_ + ".000000"


def _copy_converter(kind: Any) -> Callable[[Any], Any]:
    """What a column's bind processing would do to a value, for COPY: UTC datetimes (naive ones
    refused, as ``UtcDateTime`` refuses them) and JSON text."""
    if isinstance(kind, UtcDateTime):
        return _utc_value
    if isinstance(kind, JSON):
        return lambda value: None if value is None else json.dumps(value)
    return lambda value: value


def _utc_value(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} refused: riskwire stores UTC only")
    return value


def _dedupe(rows: Iterable[dict[str, Any]], *key: str) -> list[dict[str, Any]]:
    """One row per natural key (the last wins), so one batch never conflicts with itself."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in key)] = row
    return list(out.values())


def upsert_documents(session: Session, documents: Sequence[Document]) -> None:
    doc_rows = [
        {
            "id": d.id, "source": d.source, "kind": d.kind.value, "title": d.title,
            "text": d.text, "url": d.url, "lang": d.lang,
            "published_at": d.published_at, "fetched_at": d.fetched_at,
            "story_id": d.story_id, "novelty": d.novelty,
        }
        for d in documents
    ]  # fmt: skip
    ticker_rows = [
        {"document_id": d.id, "ticker": t.ticker, "relevance": t.relevance,
         "published_at": d.published_at}
        for d in documents
        for t in d.tickers
    ]  # fmt: skip
    _insert_ignore(session, DocumentRow, _dedupe(doc_rows, "id"))
    _insert_ignore(session, DocumentTickerRow, _dedupe(ticker_rows, "document_id", "ticker"))


def upsert_scores(session: Session, scores: Sequence[Score]) -> None:
    """Store fused scores and member votes; a score fanned out to several tickers is stored once."""
    score_rows = []
    vote_rows = []
    for s in scores:
        neg, neu, pos = s.probabilities
        score_rows.append(
            {
                "run_id": s.run_id, "document_id": s.document_id, "model_version": s.model_version,
                "published_at": s.published_at, "label": s.label,
                "p_negative": neg, "p_neutral": neu, "p_positive": pos, "score": s.score,
                "confidence": s.confidence, "disagreement": s.disagreement,
            }
        )  # fmt: skip
        for v in s.votes:
            vneg, vneu, vpos = v.probabilities
            vote_rows.append(
                {
                    "document_id": s.document_id, "member": v.member,
                    "model_version": v.model_version, "label": v.label,
                    "p_negative": vneg, "p_neutral": vneu, "p_positive": vpos,
                }
            )  # fmt: skip
    _insert_ignore(session, ScoreRow, _dedupe(score_rows, "run_id", "document_id", "model_version"))
    _insert_ignore(session, VoteRow, _dedupe(vote_rows, "document_id", "member", "model_version"))


def copy_scores(
    session: Session,
    run_id: str,
    model_version: str,
    start: datetime,
    end: datetime,
    document_ids: Sequence[str] | None = None,
    tickers: Sequence[str] = (),
    from_run: str | None = None,
) -> int:
    """Copy stored scores of ``model_version`` published in ``[start, end)`` (of ``document_ids``,
    ``tickers`` and ``from_run`` when given) to ``run_id``, inside the database: a replay reusing
    cached scores. Scores held by several runs are copied once (the conflict is ignored). Returns
    rows inserted."""
    if document_ids is not None and not document_ids:
        return 0
    columns = [c.name for c in ScoreRow.__table__.columns]
    source = select(
        *(
            literal(run_id, String()).label("run_id")
            if name == "run_id"
            else getattr(ScoreRow, name)
            for name in columns
        )
    ).where(
        ScoreRow.model_version == model_version,
        ScoreRow.published_at >= start,
        ScoreRow.published_at < end,
        ScoreRow.run_id != run_id,
    )
    if from_run is not None:
        source = source.where(ScoreRow.run_id == from_run)
    if document_ids is not None:
        source = source.where(ScoreRow.document_id.in_(list(document_ids)))
    if tickers:
        mentions = select(DocumentTickerRow.document_id).where(
            DocumentTickerRow.ticker.in_(list(tickers))
        )
        source = source.where(ScoreRow.document_id.in_(mentions))
    insert = _insert(session, ScoreRow).from_select(columns, source)
    result = session.connection().execute(insert.on_conflict_do_nothing())  # type: ignore[attr-defined]
    return int(result.rowcount or 0)


def cache_run(
    session: Session, model_version: str, start: datetime, end: datetime, sample: int = 5000
) -> str | None:
    """The run holding most of the first ``sample`` scores of ``model_version`` published in
    ``[start, end)`` (``live`` on a tie), or None when no run holds any: where a replay reads its
    cached scores from. A sample, because counting a long period costs a scan of it."""
    first = (
        select(ScoreRow.run_id)
        .where(
            ScoreRow.model_version == model_version,
            ScoreRow.published_at >= start,
            ScoreRow.published_at < end,
        )
        .order_by(ScoreRow.published_at)
        .limit(sample)
        .subquery()
    )
    counts = session.execute(select(first.c.run_id, func.count()).group_by(first.c.run_id)).all()
    if not counts:
        return None
    return min(counts, key=lambda rc: (-rc[1], rc[0] != "live", rc[0]))[0]


READ_TABLES = ("documents", "document_tickers", "scores")


def refresh_statistics(session: Session, tables: Sequence[str] = READ_TABLES) -> list[str]:
    """On PostgreSQL, ANALYZE the tables whose planner statistics are missing or stale by
    autovacuum's own measure (more than 50 + 10% of their rows changed since), and return them.

    After a bulk load with autovacuum off or behind, the planner takes a table of a million rows for
    an empty one, and a replay's join turns quadratic. SQLite plans well enough without."""
    if session.get_bind().dialect.name != "postgresql":
        return []
    stale = (
        session.execute(
            text(
                "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                "AND relname = ANY(:names) AND "
                "((last_analyze IS NULL AND last_autoanalyze IS NULL) "
                " OR n_mod_since_analyze > 50 + 0.1 * n_live_tup)"
            ),
            {"names": list(tables)},
        )
        .scalars()
        .all()
    )
    for name in stale:
        session.execute(text(f'ANALYZE "{name}"'))
    return list(stale)


def sentiment_table(key: str) -> type[TickerSentimentRow] | type[GroupSentimentRow]:
    """Where a group's rolling rows live: tickers in ``ticker_sentiment``, sectors and the market
    in ``group_sentiment``."""
    return TickerSentimentRow if group_kind(key) == "ticker" else GroupSentimentRow


def upsert_ticker_sentiment(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Rolling rows of any group, each into its group's table, once."""
    rows = _dedupe(rows, "run_id", "ticker", "document_id")
    groups = [r for r in rows if group_kind(r["ticker"]) != "ticker"]
    if groups:
        rows = [r for r in rows if group_kind(r["ticker"]) == "ticker"]
        _insert_ignore(session, GroupSentimentRow, groups)
    _insert_ignore(session, TickerSentimentRow, rows)


def upsert_alerts(session: Session, alerts: Sequence[Alert]) -> None:
    """Insert firing alerts once; a resolved event marks its alert resolved (idempotently)."""
    rows = [_alert_row(a) for a in alerts]
    firing = _dedupe((r for r in rows if r["state"] == AlertState.FIRING), "id")
    resolved = _dedupe((r for r in rows if r["state"] == AlertState.RESOLVED), "id")
    _insert_ignore(session, AlertRow, firing)
    if resolved:
        stmt = _insert(session, AlertRow)
        stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["id"],
            set_={"state": stmt.excluded.state, "resolved_at": stmt.excluded.resolved_at},  # type: ignore[attr-defined]
        )
        session.execute(stmt, resolved)


def _alert_row(a: Alert) -> dict[str, Any]:
    resolved = a.state == AlertState.RESOLVED
    return {
        "id": a.id, "run_id": a.run_id, "rule": a.rule, "ticker": a.ticker,
        "severity": a.severity.value, "state": a.state.value,
        "window_start": a.window_start, "window_end": a.window_end,
        "fired_at": a.window_end, "resolved_at": a.event_time if resolved else None,
        "measured": a.values, "thresholds": a.thresholds, "evidence": list(a.evidence),
        "explanation": a.explanation, "family": a.family,
    }  # fmt: skip


def alert_of(row: AlertRow) -> Alert:
    """The firing alert a stored row was made from (the inverse of ``_alert_row``)."""
    return Alert(
        id=row.id, run_id=row.run_id, rule=row.rule, ticker=row.ticker,
        severity=Severity(row.severity), state=AlertState(row.state), window_start=row.window_start,
        window_end=row.window_end, event_time=row.fired_at, values=row.measured,
        thresholds=row.thresholds, evidence=tuple(row.evidence), explanation=row.explanation,
        family=row.family,
    )  # fmt: skip


def evidence_documents(session: Session, alert: AlertRow) -> list[dict[str, Any]]:
    """An alert's evidence, in its order (the documents that weighed most first): each document
    with its fused score in the alert's run and the member votes behind that score (every vote
    stored for it where the model registry does not know the score's version). A document gone
    since (retention) is listed by id alone."""
    ids = list(alert.evidence)
    if not ids:
        return []
    docs = {d.id: d for d in session.scalars(select(DocumentRow).where(DocumentRow.id.in_(ids)))}
    # A document scored twice in the run (the models changed while it was redelivered) shows the
    # score its group counted, as its rolling row recorded it; failing that, the last version.
    rolling = sentiment_table(alert.ticker)
    counted = {
        document_id: (label, score)
        for document_id, label, score in session.execute(
            select(rolling.document_id, rolling.label, rolling.score).where(
                rolling.run_id == alert.run_id, rolling.ticker == alert.ticker,
                rolling.document_id.in_(ids),
            )
        ).tuples()
    }  # fmt: skip
    scores: dict[str, ScoreRow] = {}
    for row in session.scalars(
        select(ScoreRow)
        .where(ScoreRow.run_id == alert.run_id, ScoreRow.document_id.in_(ids))
        .order_by(ScoreRow.model_version)
    ):
        held = scores.get(row.document_id)
        if held is None or counted.get(row.document_id) != (held.label, held.score):
            scores[row.document_id] = row
    members = _member_versions(session, {s.model_version for s in scores.values()})
    votes: dict[str, list[dict[str, Any]]] = {}
    for v in session.scalars(
        select(VoteRow)
        .where(VoteRow.document_id.in_(ids))
        .order_by(VoteRow.member, VoteRow.model_version)
    ):
        chosen = scores.get(v.document_id)
        cast_by = members.get(chosen.model_version) if chosen is not None else None
        if cast_by is not None and v.model_version not in cast_by:
            continue  # another ensemble's member scored it too: not a vote in this score
        votes.setdefault(v.document_id, []).append({
            "member": v.member, "model_version": v.model_version, "label": v.label,
            "probabilities": [v.p_negative, v.p_neutral, v.p_positive],
        })  # fmt: skip
    out: list[dict[str, Any]] = []
    for document_id in ids:
        d, s = docs.get(document_id), scores.get(document_id)
        if d is None:
            out.append({"id": document_id, "found": False})
            continue
        out.append({
            "id": d.id, "found": True, "title": d.title, "source": d.source, "kind": d.kind,
            "url": d.url, "published_at": d.published_at.isoformat(),
            "text": d.text[:500],
            "score": None if s is None else {
                "model_version": s.model_version, "label": s.label, "score": s.score,
                "confidence": s.confidence, "disagreement": s.disagreement,
                "probabilities": [s.p_negative, s.p_neutral, s.p_positive],
            },
            "votes": votes.get(d.id, []),
        })  # fmt: skip
    return out


def _member_versions(session: Session, versions: set[str]) -> dict[str, set[str]]:
    """The member versions behind each of these ensemble or router versions, as the model
    registry describes them; a version the registry does not know is left out."""

    def described(wanted: set[str]) -> dict[str, dict[str, Any]]:
        rows = select(ModelVersionRow.version, ModelVersionRow.description)
        return {v: d for v, d in session.execute(rows.where(ModelVersionRow.version.in_(wanted)))}

    out: dict[str, set[str]] = {}
    known = described(versions)
    routed = {e for d in known.values() for e in (d.get("ensembles") or {}).values()}
    known |= described(routed - known.keys())
    for version in versions:
        d = known.get(version)
        if d is None:
            continue
        if d.get("kind") == "ensemble":
            out[version] = set(d.get("members") or ())
        elif d.get("kind") == "router":
            inner = [known.get(e) for e in (d.get("ensembles") or {}).values()]
            if all(i is not None for i in inner):
                out[version] = {m for i in inner if i is not None for m in i.get("members") or ()}
    return out


AGGREGATE_VALUES = (
    "group_kind", "window_end", "documents", "mean_score", "negative_share", "dispersion",
    "disagreement", "sentiment_z", "volume_z",
)  # fmt: skip


def upsert_aggregates(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Aggregate windows with their latest values (a window is rewritten as documents come in)."""
    rows = _dedupe(rows, "run_id", "ticker", "window_minutes", "window_start")
    if not rows:
        return
    connection = session.connection()
    keys = '"run_id", "ticker", "window_minutes", "window_start"'
    values = ", ".join(f'"{name}" = excluded."{name}"' for name in AGGREGATE_VALUES)
    conflict = f"({keys}) DO UPDATE SET {values}"
    if _copies(connection, rows):
        _copy_in(connection, RiskAggregateRow, rows, conflict)
        return
    if connection.dialect.name == "sqlite" and _sqlite_insert(
        connection, RiskAggregateRow, rows, conflict
    ):
        return
    stmt = _insert(session, RiskAggregateRow)
    excluded = stmt.excluded  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["run_id", "ticker", "window_minutes", "window_start"],
        set_={name: getattr(excluded, name) for name in AGGREGATE_VALUES},
    )
    connection.execute(stmt, rows)  # Core, as in _insert_ignore: not the ORM bulk path


@dataclass
class GroupState:
    """What was stored for one group: its counted events, firing alerts and last firings."""

    events: list[tuple[datetime, str, float, str | None, float | None, str | None]]
    firing: list[Alert]
    last_fired: dict[str, datetime]


def load_group_states(
    session: Session, run_id: str, keys: Sequence[str], back: timedelta
) -> dict[str, GroupState]:
    """The stored state of each group: its counted (not late) events from ``back`` before its
    newest, its firing alerts, and the start of each rule's last firing window."""
    out = {key: GroupState([], [], {}) for key in keys}
    if not keys:
        return out
    newest: dict[str, datetime] = {}
    for table in {sentiment_table(k) for k in keys}:
        newest.update(
            session.execute(
                select(table.ticker, func.max(table.published_at))
                .where(table.run_id == run_id, table.ticker.in_(keys))
                .group_by(table.ticker)
            )
            .tuples()
            .all()
        )
    for key, last in newest.items():
        t = sentiment_table(key)
        rows = session.execute(
            select(t.published_at, t.document_id, t.score, t.label, t.disagreement, t.story_id)
            .where(t.run_id == run_id, t.ticker == key, t.published_at >= last - back,
                   t.late.is_(False))
        ).all()  # fmt: skip
        out[key].events = [tuple(r) for r in rows]  # type: ignore[misc]
    for row in session.scalars(
        select(AlertRow).where(
            AlertRow.run_id == run_id, AlertRow.ticker.in_(keys), AlertRow.state == "firing"
        )
    ):
        out[row.ticker].firing.append(alert_of(row))
    for key, rule, start in session.execute(
        select(AlertRow.ticker, AlertRow.rule, func.max(AlertRow.window_start))
        .where(AlertRow.run_id == run_id, AlertRow.ticker.in_(keys))
        .group_by(AlertRow.ticker, AlertRow.rule)
    ):
        out[key].last_fired[rule] = start if start.tzinfo else start.replace(tzinfo=UTC)
    return out


def insert_dead_letters(session: Session, letters: Sequence[DeadLetter]) -> None:
    """Store dead letters, one row per letter id (its stage, topic, key and payload). A letter
    seen again (redelivered, or failing again after a redrive) moves the row's ``last_seen_at``
    forward and takes its reason, when it is newer; an older copy changes nothing, so storing
    the same letters twice, in any order, leaves the same rows."""
    rows: dict[str, dict[str, Any]] = {}
    for d in letters:
        row = rows.get(d.id)
        if row is None:
            rows[d.id] = {
                "id": d.id, "stage": d.stage, "reason": d.reason, "topic": d.topic, "key": d.key,
                "payload": d.payload, "occurred_at": d.occurred_at,
                "last_seen_at": d.occurred_at, "payload_exact": d.payload_exact, "redrives": 0,
            }  # fmt: skip
            continue
        row["occurred_at"] = min(row["occurred_at"], d.occurred_at)
        if d.occurred_at > row["last_seen_at"]:
            row["last_seen_at"], row["reason"] = d.occurred_at, d.reason
    if not rows:
        return
    stmt = _insert(session, DeadLetterRow)
    excluded = stmt.excluded  # type: ignore[attr-defined]
    newer = excluded.last_seen_at > DeadLetterRow.last_seen_at
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["id"],
        set_={
            "last_seen_at": case((newer, excluded.last_seen_at), else_=DeadLetterRow.last_seen_at),
            "reason": case((newer, excluded.reason), else_=DeadLetterRow.reason),
        },
    )
    values = list(rows.values())
    connection = session.connection()
    for start in range(0, len(values), CHUNK):
        connection.execute(stmt, values[start : start + CHUNK])


def register_model_versions(
    session: Session, entries: Sequence[tuple[str, str, dict[str, Any]]], now: datetime
) -> None:
    """Record (name, version, description) entries once; a known version is left as it was."""
    rows = [
        {"version": version, "name": name, "kind": str(description.get("kind", "")),
         "description": description, "registered_at": now}
        for name, version, description in entries
    ]  # fmt: skip
    _insert_ignore(session, ModelVersionRow, _dedupe(rows, "version"))


def count_rows(session: Session, table: type[Base]) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


@dataclass(frozen=True)
class TickerSummary:
    ticker: str
    documents: int
    mean_score: float
    alerts: int


def ticker_summary(session: Session, run_id: str = "live") -> list[TickerSummary]:
    """Per ticker: documents, mean fused score and alerts fired, for the CLI's table."""
    docs = (
        select(
            DocumentTickerRow.ticker,
            func.count(func.distinct(ScoreRow.document_id)).label("documents"),
            func.avg(ScoreRow.score).label("mean_score"),
        )
        .join(ScoreRow, ScoreRow.document_id == DocumentTickerRow.document_id)
        .where(ScoreRow.run_id == run_id)
        .group_by(DocumentTickerRow.ticker)
    )
    alerts = dict(
        session.execute(
            select(AlertRow.ticker, func.count())
            .where(AlertRow.run_id == run_id)
            .group_by(AlertRow.ticker)
        ).all()
    )
    return [
        TickerSummary(t, int(n), float(m), int(alerts.get(t, 0)))
        for t, n, m in session.execute(docs).all()
    ]


def store_rule_set(
    session: Session, rules: dict[str, Any], digest: str, source: str, now: datetime
) -> int:
    row = RuleSetRow(digest=digest, rules=rules, source=source, loaded_at=now)
    session.add(row)
    session.flush()
    return row.id


def latest_rule_set(session: Session) -> RuleSetRow | None:
    return session.scalars(select(RuleSetRow).order_by(RuleSetRow.id.desc()).limit(1)).first()

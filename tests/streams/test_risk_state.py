"""The risk engine's durable state is what it stored: a worker that takes groups over rebuilds them
from their rolling rows and alerts and carries on exactly as if it had run all along (both databases).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from riskwire.records import group_key
from storage import make_engine, session_factory, upgrade
from storage.tables import GroupSentimentRow, RiskAggregateRow
from streams.pipeline.risk import RiskEngine, Rule
from streams.risk import apply_scores, persist_risk, restore_groups
from tests.factories import make_score

T = datetime(2026, 10, 1, tzinfo=UTC)
RULES = (
    Rule("surge", "negative_surge", hop=timedelta(minutes=30)),
    Rule("shock", "sentiment_z", window=timedelta(hours=1)),
    Rule("sector_surge", "negative_surge", group="sector", hop=timedelta(minutes=30)),
)


def engine() -> RiskEngine:
    return RiskEngine(RULES, lateness=timedelta(hours=1), baseline=timedelta(days=3))


def stream() -> list:
    rng = random.Random(5)
    scores = []
    for i in range(900):
        t = T + timedelta(minutes=7 * i)
        bad = 600 <= i < 640
        ticker = rng.choice(["ACME", "BOLT"])
        score = rng.uniform(-0.95, -0.5) if bad else rng.uniform(-0.3, 0.6)
        s = make_score(ticker=ticker, score=round(score, 3), published_at=t,
                       disagreement=round(rng.uniform(0, 0.6), 3))  # fmt: skip
        scores.append(s)
        scores.append(s.model_copy(update={"ticker": group_key("sector", "Energy")}))
    return scores


def test_groups_rebuilt_from_storage_continue_like_an_engine_that_never_stopped(
    database_url: str,
) -> None:
    upgrade(database_url)
    db = make_engine(database_url)
    sessions = session_factory(db)
    scores = stream()
    whole = engine()
    expected, _ = apply_scores(whole, scores, T)
    expected_aggregates = whole.drain_aggregates()
    assert any(u.alerts for _, u in expected)

    cut = 1300
    first = engine()
    before, _ = apply_scores(first, scores[:cut], T)
    with sessions.begin() as session:
        persist_risk(session, before, aggregates=first.drain_aggregates())
    second = engine()
    with sessions() as session:
        restore_groups(second, session, ["ACME", "BOLT", "sector:Energy", "NEVER"])
    after, _ = apply_scores(second, scores[cut:], T)
    assert [u for _, u in before + after] == [u for _, u in expected]
    with sessions.begin() as session:
        persist_risk(session, after, aggregates=second.drain_aggregates())

    with sessions() as session:
        stored = {
            (r.ticker, r.window_minutes, r.window_start): r
            for r in session.scalars(select(RiskAggregateRow))
        }
        groups = session.scalars(select(GroupSentimentRow.ticker)).all()
    assert set(groups) == {"sector:Energy"}  # sector rows live beside, not among, the tickers'
    for row in expected_aggregates:
        got = stored[(row["ticker"], row["window_minutes"], row["window_start"])]
        assert got.documents == row["documents"], row
        assert got.mean_score == row["mean_score"] and got.volume_z == row["volume_z"], row
    assert len(stored) == len(expected_aggregates)
    db.dispose()

"""A small world for replay tests: documents over two days, scored and risk-evaluated "live" by the
same pure functions the stream runs, stored like the stream stores them; and readers that put a
run's results in a form two runs can be compared by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.ensemble import Ensemble
from models.lexicon import LexiconMember
from riskwire.records import Document, Kind, TickerLink
from riskwire.settings import Settings
from storage.delivery import Targets
from storage.tables import AlertRow, ScoreRow, TickerSentimentRow
from streams.pipeline import fan_out, score_documents
from streams.pipeline.rules import build_risk_engine
from streams.pipeline.stories import StoryIndex, with_story
from streams.risk import apply_scores, group_mentions, persist_risk
from streams.scoring import persist_scored

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
BAD = [
    "{n} shares plunge after profit warning",
    "{n} cuts outlook as losses widen",
    "{n} recalls product, shares slump",
]
DETAIL = (
    "analysts investors regulators suppliers customers lenders unions auditors rivals partners "
    "in europe asia america across the region this week overnight after hours at the open"
).split()
CALM = [
    "{n} to present at industry conference",
    "{n} reports record profit",
    "{n} announces board changes",
]


def lexicon_ensemble() -> Ensemble:
    return Ensemble([LexiconMember()], name="lex")


def world(days: int = 2) -> list[Document]:
    """Three tickers, a document every 20 minutes each; ACME has a bad morning each day, BOLT a
    bad afternoon on day one, and every tenth document names two tickers."""
    docs = []
    names = ["ACME", "BOLT", "CRUX"]
    for i in range(days * 72):
        t = DAY0 + timedelta(minutes=20 * i)
        for k, name in enumerate(names):
            published = t + timedelta(minutes=k * 3)
            bad = (name == "ACME" and 8 <= published.hour < 11) or (
                name == "BOLT" and published.day == DAY0.day and 14 <= published.hour < 16
            )
            template = (BAD if bad else CALM)[i % 3]
            # each document its own news: a detail no other shares (else they are one story)
            detail = " ".join(DETAIL[(i * 7 + k * 13 + j * 5) % len(DETAIL)] for j in range(6))
            text = f"{template.format(n=name)}; {detail} {i}"
            tickers = [name] + ([names[(k + 1) % 3]] if i % 10 == 0 else [])
            docs.append(
                Document(
                    id=f"{i:06d}{k:026d}", source="wire", kind=Kind.NEWS, title=text, text=text,
                    published_at=published, fetched_at=published + timedelta(seconds=5),
                    tickers=tuple(TickerLink(ticker=x, relevance=1.0) for x in tickers),
                )
            )  # fmt: skip
    return docs


def run_live(
    sessions: sessionmaker[Session],
    settings: Settings,
    ensemble: Ensemble,
    docs: list[Document],
    targets: Targets | None = None,
) -> None:
    """What the live stream does, in event-time order, through the same functions and writes."""
    stories = StoryIndex()
    ordered = [with_story(stories, d) for d in sorted(docs, key=lambda d: (d.published_at, d.id))]
    engine = build_risk_engine(settings)
    now = datetime.now(UTC)
    for start in range(0, len(ordered), 64):
        batch = ordered[start : start + 64]
        scores = score_documents(ensemble, batch)
        by_id = {d.id: d for d in batch}
        with sessions.begin() as session:
            persist_scored(session, [(by_id[s.document_id], s) for s in scores])
        mentions = [m for s in scores for m in fan_out(s, by_id[s.document_id])]
        groups = {(g.ticker, g.document_id): g for m in mentions
                  for g in group_mentions(m, {}, settings.market_group)}  # fmt: skip
        updates, dead = apply_scores(engine, mentions + list(groups.values()), now)
        assert not dead
        with sessions.begin() as session:
            persist_risk(session, updates, targets, engine.drain_aggregates())


def scores_of(session: Session, run: str) -> dict[str, tuple[Any, ...]]:
    rows = session.execute(select(ScoreRow).where(ScoreRow.run_id == run)).scalars()
    return {
        r.document_id: (r.model_version, r.label, r.p_negative, r.p_neutral, r.p_positive,
                        r.score, r.confidence, r.disagreement)
        for r in rows
    }  # fmt: skip


def sentiment_of(session: Session, run: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = session.scalars(select(TickerSentimentRow).where(TickerSentimentRow.run_id == run))
    return {
        (r.ticker, r.document_id): (r.published_at, r.score, r.window_documents,
                                    round(r.window_mean_score, 9), round(r.window_negative_share, 9))
        for r in rows
    }  # fmt: skip


def alerts_of(session: Session, run: str) -> dict[tuple[str, str, datetime], tuple[Any, ...]]:
    rows = session.scalars(select(AlertRow).where(AlertRow.run_id == run))
    return {
        (r.rule, r.ticker, r.window_start): (r.severity, r.state, r.window_end, r.resolved_at,
                                             r.measured, r.thresholds, tuple(r.evidence))
        for r in rows
    }  # fmt: skip

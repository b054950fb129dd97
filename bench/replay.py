"""Replay throughput: stored documents whose scores are cached, and with re-scoring.

    riskwire bench replay [--documents 50000] [--rescore-documents 1000] [--database-url URL] [--json]

Builds a throw-away database (SQLite in a temporary directory unless ``--database-url`` names an
empty PostgreSQL database) holding synthetic documents over ten days and 200 tickers, with live
scores cached for one model version, then times whole replay jobs through ``ReplayRunner``: reading
pages, the risk engine, and writing scores, rolling sentiment, alerts and checkpoints.

Figures, all in the same run:
- cached: docs/s of a whole replay job that reuses the cached scores (target: >= 20,000 on 2
  cores), and the same without the report it ends with;
- engine: docs/s of the risk engine alone on the same scores and groups, in memory (the job's
  critical path: it runs in the job's process while a thread reads and a child writes); and the
  same with the live stream's allowed lateness (four days by default), where the market group
  holds days of events (tens of thousands here) instead of the replay's two hours;
- rescored: docs/s of a replay that scores every document again with the default ensemble, against
  the ensemble's own docs/s on the same texts (``judge`` alone), so the ratio is what replay costs
  on top of the models.
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from riskwire.delivery.model import sector_map
from riskwire.records import Document, Kind, Label, Score, TickerLink
from riskwire.replay import (
    CHECKPOINT_EVERY,
    PAGE,
    ReplayRunner,
    ReplaySpec,
    create_job,
    group_keys,
)
from riskwire.settings import Settings, load_settings
from storage import make_engine, repository, session_factory, upgrade
from streams.pipeline import score_documents
from streams.pipeline.rules import build_risk_engine

T0 = datetime(2026, 3, 2, tzinfo=UTC)
TICKERS = [f"T{i:03d}" for i in range(200)]
CACHED_VERSION = "bench-cached-1"
HEADLINES = [
    "{t} shares plunge after profit warning",
    "{t} cuts full-year outlook as demand weakens",
    "{t} beats expectations and raises dividend",
    "{t} to present at industry conference next week",
    "{t} announces board changes",
    "{t} wins large contract, shares jump",
]


def synthetic(n: int, seed: int = 0, days: int = 10) -> list[Document]:
    """n documents over ``days`` days, each naming one or two tickers; a few tickers get bad days."""
    rng = random.Random(seed)
    span = days * 86_400
    docs = []
    for i in range(n):
        t = T0 + timedelta(seconds=rng.randrange(span))
        names = rng.sample(TICKERS, 2 if rng.random() < 0.1 else 1)
        bad_day = names[0] in TICKERS[:10] and t.day % 3 == 0
        template = HEADLINES[rng.randrange(2) if bad_day else rng.randrange(len(HEADLINES))]
        text = template.format(t=names[0])
        docs.append(
            Document(
                id=f"{i:032x}", source="bench", kind=Kind.NEWS, title=text, text=text,
                published_at=t, fetched_at=t + timedelta(seconds=3),
                tickers=tuple(TickerLink(ticker=x, relevance=1.0) for x in names),
            )
        )  # fmt: skip
    return docs


def cached_score(doc: Document, rng: random.Random) -> Score:
    negative = "plunge" in (doc.title or "") or "cuts" in (doc.title or "")
    s = -rng.uniform(0.4, 0.9) if negative else rng.uniform(-0.3, 0.8)
    neg = max(0.0, -s) + (1 - abs(s)) / 3
    pos = max(0.0, s) + (1 - abs(s)) / 3
    label: Label = "negative" if s < -0.2 else "positive" if s > 0.2 else "neutral"
    return Score(
        document_id=doc.id, ticker=None, kind=doc.kind, published_at=doc.published_at,
        model_version=CACHED_VERSION, label=label, probabilities=(neg, 1 - neg - pos, pos),
        score=s, confidence=max(neg, 1 - neg - pos, pos), disagreement=0.1, votes=(),
    )  # fmt: skip


def time_engine(
    settings: Settings,
    docs: list[Document],
    scores: list[Score],
    lateness: timedelta | None = timedelta(0),
) -> float:
    """Seconds the risk engine takes over the documents in event-time order, in the groups a replay
    gives them, with a drain of the aggregates every page and the engine's state where a replay
    checkpoints (every ``CHECKPOINT_EVERY`` documents, and with the last page). A replay's engine
    has no lateness; ``None`` gives the live stream's."""
    sector_of = dict(sector_map(settings)) if settings.sector_groups else {}
    engine = build_risk_engine(settings, "bench-engine", lateness=lateness)
    ordered = sorted(zip(docs, scores, strict=True), key=lambda p: (p[0].published_at, p[0].id))
    started = time.perf_counter()
    since = 0
    for i in range(0, len(ordered), PAGE):
        page = ordered[i : i + PAGE]
        for doc, score in page:
            keys = group_keys([t.ticker for t in doc.tickers], sector_of, settings.market_group)
            for key in keys:
                engine.process(score, key)
        engine.drain_aggregates()
        since += len(page)
        if since >= CHECKPOINT_EVERY or i + PAGE >= len(ordered):
            engine.state()
            since = 0
    return time.perf_counter() - started


def run(
    documents: int = 50_000,
    rescore_documents: int = 1_000,
    database_url: str | None = None,
    say: Any = print,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="riskwire-bench-replay-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    settings = load_settings(database_url=url, data_dir=workdir)
    sessions = session_factory(make_engine(url))
    docs = synthetic(documents)
    rng = random.Random(1)
    say(f"loading {documents:,} documents with cached scores into {url.split(':')[0]} ...")
    with sessions.begin() as session:
        repository.upsert_documents(session, docs)
        scores = [cached_score(d, rng) for d in docs]
        repository.upsert_scores(session, scores)
    end = T0 + timedelta(days=11)

    stamps: dict[str, float] = {}

    def written(done: int, total: int) -> None:
        if done >= total:  # the last page is stored; what follows is the report
            stamps["written"] = time.perf_counter()

    def timed_job(spec: ReplaySpec, runner: ReplayRunner) -> tuple[float, str]:
        job = create_job(sessions, settings, spec)
        started = stamps["started"] = time.perf_counter()
        status = runner.run(job, written)
        return time.perf_counter() - started, status

    say("replaying with cached scores ...")
    cached_s, status = timed_job(
        ReplaySpec(start=T0, end=end, model_version=CACHED_VERSION),
        ReplayRunner(settings, sessions),
    )
    assert status == "done", status
    engine_s = time_engine(settings, docs, scores)
    live_engine_s = time_engine(settings, docs, scores, lateness=None)
    result: dict[str, Any] = {
        "database": url.split(":")[0].split("+")[0],
        "documents": documents,
        "cached_docs_per_s": documents / cached_s,
        "cached_seconds": cached_s,
        # the same job without its report (comparison queries, timeline and plot: under 0.5 s)
        "cached_pages_docs_per_s": documents / (stamps["written"] - stamps["started"]),
        "report_seconds": stamps["started"] + cached_s - stamps["written"],
        "engine_docs_per_s": documents / engine_s,
        "engine_live_lateness_docs_per_s": documents / live_engine_s,
    }
    if rescore_documents:
        from models.factory import build_ensemble

        say("loading the default ensemble ...")
        ensemble = build_ensemble(settings)
        # the first documents of the data, so the replay has nothing before them to warm up on
        ordered = sorted(docs, key=lambda d: (d.published_at, d.id))
        first = T0
        last = ordered[min(rescore_documents, len(ordered)) - 1].published_at + timedelta(
            microseconds=1
        )
        in_period = [d for d in ordered if d.published_at < last]
        score_documents(ensemble, in_period[:64])  # warm up
        say(f"scoring {len(in_period):,} documents with the ensemble alone ...")
        started = time.perf_counter()
        for i in range(0, len(in_period), 64):
            score_documents(ensemble, in_period[i : i + 64])
        raw_s = time.perf_counter() - started
        say("replaying them with re-scoring ...")
        runner = ReplayRunner(settings, sessions, lambda: ensemble, page_size=512)
        spec = ReplaySpec(start=first, end=last, model_version=ensemble.version, rescore=True)
        rescored_s, status = timed_job(spec, runner)
        assert status == "done", status
        result.update(
            ensemble=ensemble.version,
            rescore_documents=len(in_period),
            ensemble_docs_per_s=len(in_period) / raw_s,
            rescored_docs_per_s=len(in_period) / rescored_s,
            rescored_vs_ensemble=raw_s / rescored_s,
        )
    return result

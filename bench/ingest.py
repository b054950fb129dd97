"""Ingest throughput on 2 cores: normalise (HTML, time, canonical URL, language, entity links) +
story clustering (MinHash/LSH) + novelty, per document, as the ingest path runs them; and entity
linking's precision and recall on the packaged labelled samples.

    riskwire bench ingest [--documents 20000] [--database-url URL] [--json]

The worker keeps its story index in the database, shared by every worker (``storage.stories``):
that index is measured too, in batches of 256 as a worker assigns them, on a throw-away SQLite file
or on ``--database-url`` (a PostgreSQL database it may write to), and must cluster exactly as the
in-memory index does.

The corpus is synthetic RSS-like items over 200 tickers with HTML markup, tracking parameters and a
fifth of them syndicated copies or retweets of earlier items. Baseline in the same run: decoding the
items' JSON alone, the floor every stage pays.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from riskwire.records import Document, Kind, RawRecord
from streams.pipeline import normalise
from streams.pipeline.stories import StoryAssignment, StoryIndex

T0 = datetime(2026, 11, 2, tzinfo=UTC)
BATCH = 256  # documents per story-index transaction, as a worker's batches
TICKERS = [a + b + c for a in "QXZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for c in "AEIOUY"][:200]
WORDS = (
    "revenue margin guidance analysts investors quarter growth debt bond yield merger acquisition "
    "regulator lawsuit recall supply chain demand pricing costs inflation rates currency exports "
    "factory plant workers strike union chip battery software cloud advertising subscribers fleet "
    "orders backlog rating downgrade upgrade target buyback dividend capital spending restructuring "
    "layoffs hiring expansion partnership licence patent trial approval launch delay outage breach"
).split()
TEMPLATES = [
    "<p>${t} shares plunge after the company issued a profit warning for the third quarter</p>",
    "<p>${t} cuts its full-year outlook as demand weakens in Europe and Asia</p>",
    "<p>${t} beats expectations and raises its dividend by ten percent</p>",
    "<p>${t} to present at an industry conference in London next week</p>",
    "<p>${t} announces board changes and a new chief financial officer</p>",
    "<p>${t} wins a large multi-year contract; shares jump in early trading</p>",
]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """The items as JSON lines, and for each the index of the original it copies (itself if none)."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    origin: list[int] = []
    for i in range(n):
        t = T0 + timedelta(seconds=i * 7)
        if items and rng.random() < 0.2:  # a copy of a recent item
            back = rng.randrange(1, min(50, len(items)) + 1)
            earlier = dict(items[-back])
            origin.append(origin[-back])
            prefix = rng.choice(["(Reuters) - ", "RT @desk: ", "LONDON (Wire) - "])
            earlier.update(id=f"copy-{i}", title=prefix + earlier["title"],
                           published_at=t.isoformat())  # fmt: skip
            items.append(earlier)
            continue
        origin.append(i)
        ticker = rng.choice(TICKERS)
        detail = " ".join(rng.choice(WORDS) for _ in range(12))  # what makes each story its own
        text = rng.choice(TEMPLATES).replace("{t}", ticker) + f" {detail}"
        items.append(
            {"id": f"item-{i}", "title": text.split("</p>")[0].replace("<p>", ""),
             "summary": text, "published_at": t.isoformat(),
             "url": f"https://news.example.com/{i}?utm_source=rss&utm_medium=feed"}
        )  # fmt: skip
    return [json.dumps(item) for item in items], origin


def shared_index(docs: list[Document], url: str | None) -> tuple[float, list[StoryAssignment]]:
    """Seconds to assign ``docs`` through the database-backed index, in worker-sized batches, and
    what it assigned."""
    from storage import make_engine, session_factory, upgrade
    from storage.stories import SharedStoryIndex
    from storage.tables import StoryKeyRow, StoryMemberRow, StoryRow

    with tempfile.TemporaryDirectory() as tmp:
        url = url or f"sqlite:///{Path(tmp) / 'stories.db'}"
        upgrade(url)
        engine = make_engine(url)
        sessions = session_factory(engine)
        with sessions.begin() as session:  # a clean index: nothing from an earlier run
            for table in (StoryMemberRow, StoryKeyRow, StoryRow):
                session.execute(delete(table))
        index = SharedStoryIndex()
        out: list[StoryAssignment] = []
        started = time.perf_counter()
        for start in range(0, len(docs), BATCH):
            with sessions.begin() as session:
                out += index.assign(session, docs[start : start + BATCH])
        took = time.perf_counter() - started
        engine.dispose()
    return took, out


def run(documents: int = 20_000, database_url: str | None = None) -> dict[str, Any]:
    lines, origin = corpus(documents)
    fetched = T0 + timedelta(days=30)
    started = time.perf_counter()
    payloads = [json.loads(line) for line in lines]
    decode_s = time.perf_counter() - started

    normalise(RawRecord(source="warm", kind=Kind.NEWS, fetched_at=fetched,
                        payload={"title": "warm up", "published_at": T0.isoformat()}))  # fmt: skip
    started = time.perf_counter()
    docs = [
        normalise(RawRecord(source="bench", kind=Kind.NEWS, fetched_at=fetched, payload=p))
        for p in payloads
    ]
    normalise_s = time.perf_counter() - started

    index = StoryIndex()
    started = time.perf_counter()
    stories = [
        index.assign(d.id, d.text, d.published_at, [t.ticker for t in d.tickers]) for d in docs
    ]
    cluster_s = time.perf_counter() - started
    shared_s, shared = shared_index(docs, database_url)
    copies = sum(1 for s in stories if s.copy)
    # clustering quality against the corpus's truth: a copy is right when its story began with
    # (a copy of) the item it copies; a true copy is found when it joined a story at all
    first = {d.id: i for i, d in reversed(list(enumerate(docs)))}
    claimed = [(i, s) for i, s in enumerate(stories) if s.copy]
    right = sum(1 for i, s in claimed if origin[first[s.story_id]] == origin[i])
    true_copies = [i for i in range(len(docs)) if origin[i] != i]
    found = sum(1 for i in true_copies if stories[i].copy)
    total = decode_s + normalise_s + cluster_s
    from streams.pipeline.entities import default_linker, evaluate, labelled_sample

    linker = default_linker()
    tuned, heldout, heldout2 = (
        evaluate(linker, labelled_sample(n))
        for n in ("linking_sample", "linking_heldout", "linking_heldout2")
    )
    return {
        "documents": documents,
        "decode_per_s": documents / decode_s,
        "normalise_per_s": documents / normalise_s,
        "cluster_per_s": documents / cluster_s,
        "ingest_per_s": documents / total,
        "stories": len({s.story_id for s in stories}),
        "copies_found": copies,
        "true_copies": len(true_copies),
        "copy_precision": right / max(1, len(claimed)),
        "copy_recall": found / max(1, len(true_copies)),
        "ingest_vs_decode": decode_s / total,
        "shared_cluster_per_s": documents / shared_s,
        "shared_database": "postgresql"
        if database_url and "postgresql" in database_url
        else "sqlite",
        "shared_same_stories": shared == stories,
        "linking_tuned": tuned,
        "linking_heldout": heldout,
        "linking_heldout2": heldout2,
        "companies": len(linker.table),
    }

"""Ingest throughput on 2 cores: normalise (HTML, time, canonical URL, language, entity links) +
story clustering (MinHash/LSH) + novelty, per document, as the ingest path runs them; and entity
linking's precision and recall on the packaged labelled samples.

    riskwire bench ingest [--documents 20000] [--json]

The corpus is synthetic RSS-like items over 200 tickers with HTML markup, tracking parameters and a
fifth of them syndicated copies or retweets of earlier items. Baseline in the same run: decoding the
items' JSON alone, the floor every stage pays.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from riskwire.records import Kind, RawRecord
from streams.pipeline import normalise
from streams.pipeline.stories import StoryIndex

T0 = datetime(2026, 11, 2, tzinfo=UTC)
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


def run(documents: int = 20_000) -> dict[str, Any]:
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
    tuned, heldout = (evaluate(linker, labelled_sample(n))
                      for n in ("linking_sample", "linking_heldout"))  # fmt: skip
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
        "linking_tuned": tuned,
        "linking_heldout": heldout,
        "companies": len(linker.table),
    }

"""The risk engine under a busy feed: its cost per document as the groups' windows fill.

    riskwire bench engine [--documents 200000] [--days 8] [--drain-every 1000] [--json]

Streams synthetic scores (200 tickers, each document in its ticker's group and the market's) in
event-time order through the live stream's engine, with its rules and its allowed lateness (four
days by default: every group keeps four days of events so that a late document still lands in its
window; the market group keeps every document of those days), draining the aggregates every 1,000
documents (the live risk stage drains them with every batch it releases, often a few dozen). The
baseline, in the same run, is the same engine with no lateness (a replay's: two hours kept). The
bench's input is frozen out of the garbage collector's sight, so its collections scan what the
engine holds, as in a worker. Figures: microseconds per document in each quarter of the run for
both, the most events one group held, each run's growth (its last quarter's cost over its first's:
near 1 when the cost does not grow with what the windows hold) and the live engine's last quarter
against the baseline's.
"""

from __future__ import annotations

import gc
import random
import time
from datetime import timedelta
from typing import Any

from bench.replay import cached_score, synthetic
from riskwire.replay import group_keys
from riskwire.settings import Settings, load_settings
from streams.pipeline.rules import build_risk_engine


def _quarters(
    settings: Settings,
    scored: list[tuple[list[str], Any]],
    lateness: timedelta | None,
    drain_every: int,
) -> tuple[list[float], int]:
    engine = build_risk_engine(settings, "bench-engine", lateness=lateness)
    quarter = max(len(scored) // 4, 1)
    out: list[float] = []
    started = time.perf_counter()
    for i, (keys, score) in enumerate(scored, 1):
        for key in keys:
            engine.process(score, key)
        if i % drain_every == 0:
            engine.drain_aggregates()
        if i % quarter == 0 and len(out) < 4:
            now = time.perf_counter()
            out.append((now - started) / quarter * 1e6)
            started = now
    held = max(len(w.events) for w in engine.windows.values())
    return out, held


def run(documents: int = 200_000, days: int = 8, drain_every: int = 1000) -> dict[str, Any]:
    settings = load_settings()
    docs = sorted(synthetic(documents, seed=3, days=days), key=lambda d: (d.published_at, d.id))
    rng = random.Random(3)
    scored = [
        (group_keys([t.ticker for t in d.tickers], {}, settings.market_group), cached_score(d, rng))
        for d in docs
    ]
    gc.collect()
    gc.freeze()  # the bench's own input is not the engine's to scan: collections see the engine's
    try:
        live, live_held = _quarters(settings, scored, None, drain_every)
        gc.collect()
        base, base_held = _quarters(settings, scored, timedelta(0), drain_every)
    finally:
        gc.unfreeze()
    return {
        "documents": documents,
        "days": days,
        "drain_every": drain_every,
        "lateness_minutes": settings.allowed_lateness_minutes,
        "live_us_per_doc": live,
        "baseline_us_per_doc": base,
        "live_most_events_held": live_held,
        "baseline_most_events_held": base_held,
        "live_growth": live[-1] / live[0],
        "baseline_growth": base[-1] / base[0],
        "last_quarter_vs_baseline": live[-1] / base[-1],
    }

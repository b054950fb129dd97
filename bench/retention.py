"""Retention speed: how fast ``riskwire db prune`` deletes.

    riskwire bench prune [--documents 50000] [--database-url URL] [--json]

Builds a throw-away database (SQLite in a temporary directory unless ``--database-url`` names a
PostgreSQL server) with the replay bench's synthetic documents over ten days and 200 tickers,
their cached scores, and the rolling rows and aggregates a replay of them writes; then prunes the
first half of the period: a dry run (counting) and the run itself, timed, with rows per second.
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.replay import CACHED_VERSION, T0, cached_score, synthetic
from riskwire.replay import ReplayRunner, ReplaySpec, create_job
from riskwire.settings import load_settings
from storage import make_engine, repository, session_factory, upgrade
from storage.retention import prune

DAYS = 10


def run(
    documents: int = 50_000, database_url: str | None = None, say: Any = print
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="riskwire-bench-prune-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    settings = load_settings(database_url=url, data_dir=workdir)
    engine = make_engine(url)
    sessions = session_factory(engine)
    docs = synthetic(documents, days=DAYS)
    rng = random.Random(1)
    say(f"loading {documents:,} documents over {DAYS} days, with scores and a replay's rows ...")
    with sessions.begin() as session:
        repository.upsert_documents(session, docs)
        repository.upsert_scores(session, [cached_score(d, rng) for d in docs])
    spec = ReplaySpec(start=T0, end=T0 + timedelta(days=DAYS + 1), model_version=CACHED_VERSION)
    status = ReplayRunner(settings, sessions).run(create_job(sessions, settings, spec))
    assert status == "done", status
    cutoff = T0 + timedelta(days=DAYS / 2)
    say("counting (a dry run) ...")
    started = time.perf_counter()
    dry = prune(sessions, cutoff, dry_run=True)
    dry_s = time.perf_counter() - started
    say(f"pruning the first {DAYS / 2:g} days ...")
    started = time.perf_counter()
    done = prune(sessions, cutoff)
    prune_s = time.perf_counter() - started
    assert done.rows == dry.rows, (done.rows, dry.rows)
    engine.dispose()
    total = sum(done.rows.values())
    return {
        "database": url.split(":")[0].split("+")[0],
        "documents": documents,
        "rows_deleted": done.rows,
        "rows_deleted_total": total,
        "prune_seconds": prune_s,
        "rows_per_s": total / prune_s,
        "documents_per_s": done.rows.get("documents", 0) / prune_s,
        "dry_run_seconds": dry_s,
    }

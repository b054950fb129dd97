"""Throughput of the pure pipeline functions that every driver calls (no broker, no database).

    python -m bench.pipeline [--n 50000]

normalise: raw record -> Document; risk: Score -> rolling row + rule evaluation. Baseline in the same
run: decoding the same raw JSON alone, the floor any stage pays.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from riskwire.records import Kind, RawRecord
from streams.pipeline import NegativeSurgeRule, RiskEngine, normalise
from tests.factories import make_score

T0 = datetime(2026, 11, 2, tzinfo=UTC)
TICKERS = [f"T{i:03d}" for i in range(200)]


def timed(label: str, n: int, fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    per_second = n / (time.perf_counter() - started)
    print(f"{label:<28}{per_second:>12,.0f} /s")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    rng = random.Random(0)
    raws = [
        RawRecord(
            source="bench", kind=Kind.SOCIAL, fetched_at=T0 + timedelta(days=30),
            payload={"id": i, "text": f"${rng.choice(TICKERS)} headline number {i} <b>beats</b>",
                     "published_at": (T0 + timedelta(seconds=i)).isoformat()},
        )
        for i in range(args.n)
    ]  # fmt: skip
    blobs = [r.to_json() for r in raws]
    scores = [
        make_score(ticker=rng.choice(TICKERS), score=rng.uniform(-1, 1),
                   published_at=T0 + timedelta(seconds=rng.randint(0, 86_400)))
        for _ in range(args.n)
    ]  # fmt: skip
    base = timed(
        "baseline: decode raw JSON", args.n, lambda: [RawRecord.from_json(b) for b in blobs]
    )
    norm = timed("normalise", args.n, lambda: [normalise(RawRecord.from_json(b)) for b in blobs])
    engine = RiskEngine([NegativeSurgeRule()])
    risk = timed("risk (rows + rule)", args.n, lambda: [engine.process(s) for s in scores])
    print(f"normalise costs {base / norm:.1f}x a bare decode; risk runs at {risk:,.0f} scores/s")


if __name__ == "__main__":
    main()

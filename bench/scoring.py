"""Scoring throughput: the ensemble on micro-batches against one text at a time, in the same run.

    python -m bench.scoring [--data FILE.jsonl] [--n 2000] [--batch 64]

Prints documents per second for each member and for the fused ensemble, batched and unbatched, and
the ratio. Uses ../shared/data/fpb_dev.jsonl when present, otherwise the bundled demo feed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from models.base import Member
from models.factory import build_ensemble
from riskwire.demo import SAMPLE
from riskwire.settings import load_settings

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fpb_dev.jsonl"


def load_texts(path: Path, n: int) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            texts.append(str(row.get("text") or row.get("title") or ""))
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def rate(member: Member, texts: Sequence[str], batch: int) -> float:
    member.batch_size = batch
    for sub in getattr(member, "members", []):
        sub.batch_size = batch
    member.predict_proba(texts[: min(len(texts), 2 * batch)])  # warm up
    started = time.perf_counter()
    member.predict_proba(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.exists() else SAMPLE)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    texts = load_texts(args.data, args.n)
    ensemble = build_ensemble(load_settings())
    print(f"{len(texts)} texts from {args.data.name}; batch {args.batch} vs 1")
    print(f"{'model':<16}{'batched/s':>12}{'single/s':>12}{'ratio':>8}")
    for member in [*ensemble.members, ensemble]:
        single_texts = texts[: max(200, len(texts) // 10)]
        batched = rate(member, texts, args.batch)
        single = rate(member, single_texts, 1)
        print(f"{member.name:<16}{batched:>12.0f}{single:>12.0f}{batched / single:>8.1f}")


if __name__ == "__main__":
    main()

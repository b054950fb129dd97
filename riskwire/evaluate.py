"""Evaluate each member and the fused ensemble on a labelled JSONL file, as a table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.training import LabelledSet, evaluate
from riskwire.settings import Settings


def evaluate_file(
    settings: Settings, console: Console, data: Path, limit: int = 0
) -> dict[str, dict[str, float]]:
    from models.factory import build_ensemble

    labelled = LabelledSet.read(data)
    texts, labels = labelled.texts, labelled.labels
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    ensemble = build_ensemble(settings)
    with console.status(f"scoring {len(texts)} texts"):
        member_probs = ensemble.member_proba(texts)
    results = {m.name: evaluate(member_probs[i], labels) for i, m in enumerate(ensemble.members)}
    results[f"ensemble ({ensemble.fusion_name})"] = evaluate(
        ensemble.fusion(member_probs, ensemble.weights), labels
    )
    table = Table(title=f"{data.name}: {len(texts)} texts")
    for column in ("model", "accuracy", "macro F1"):
        table.add_column(column)
    for name, scores in results.items():
        table.add_row(name, f"{scores['accuracy']:.3f}", f"{scores['macro_f1']:.3f}")
    console.print(table)
    return results

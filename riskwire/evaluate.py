"""Evaluate each member and the fused ensemble on a labelled set: figures, table and PNG report.

Per model: accuracy, macro-F1, weighted-F1, expected calibration error (top label, 10 bins) and
docs/s. Each member is timed alone on the whole set in micro-batches; the ensemble is timed again as
the stream runs it (heads over one encoder share its embeddings; fusion included). The report folder
gets ``report.json``, ``report.md`` and ``report.png`` (a confusion matrix per model and one
reliability diagram).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from models.base import Member, forget_embeddings
from models.ensemble import Ensemble
from models.prune import Pruning, Unit
from models.routing import Router
from models.training import LabelledSet, confusion, evaluate, macro_f1_difference, reliability
from riskwire.records import LABELS

METRICS = ("accuracy", "macro_f1", "weighted_f1", "ece", "docs_per_s")


@dataclass
class Evaluation:
    data: str
    n: int
    ensemble: str
    members: dict[str, dict[str, float]]
    fused: dict[str, float]
    probs: dict[str, np.ndarray]
    labels: np.ndarray
    # per member: fused macro-F1 minus the member's, with a paired bootstrap's 95% interval
    versus: dict[str, dict[str, float]]

    def as_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "fused": self.fused,
            "n": self.n,
            "ensemble": self.ensemble,
            "data": self.data,
            "fused_minus_members": self.versus,
        }


def _versus(
    probs: dict[str, np.ndarray], fused: np.ndarray, labels: np.ndarray
) -> dict[str, dict[str, float]]:
    return {
        name: {k: round(v, 4) for k, v in macro_f1_difference(labels, fused, member).items()}
        for name, member in probs.items()
    }


def _interval(figures: dict[str, float]) -> str:
    return f"{figures['difference']:+.3f} ({figures['low']:+.3f} to {figures['high']:+.3f})"


def _figures(probs: np.ndarray, labels: np.ndarray, seconds: float) -> dict[str, float]:
    scores = evaluate(probs, labels)
    out = {k: round(float(scores[k]), 4) for k in METRICS if k in scores}
    out["docs_per_s"] = round(len(labels) / max(seconds, 1e-9), 1)
    return out


def evaluate_ensemble(
    ensemble: Ensemble, data: LabelledSet, name: str, console: Console | None = None
) -> Evaluation:
    texts, labels = data.texts, data.labels
    probs, figures = score_members(ensemble.members, data, console)
    # the ensemble as the stream runs it: heads over one encoder share its embeddings
    forget_embeddings(ensemble.members)
    started = time.perf_counter()
    fused = ensemble.fusion(ensemble.member_proba(texts), ensemble.weights)
    return Evaluation(
        data=name, n=len(texts), ensemble=ensemble.version, members=figures,
        fused=_figures(fused, labels, time.perf_counter() - started),
        probs={**probs, f"fused ({ensemble.fusion_name})": fused}, labels=labels,
        versus=_versus(probs, fused, labels),
    )  # fmt: skip


def evaluate_router(
    router: Router, data: LabelledSet, kinds: list[str], name: str, console: Console | None = None
) -> Evaluation:
    """Each row judged by the ensemble its kind routes to (language: English). Members are every
    ensemble's members by name, each timed and scored alone on all rows."""
    texts, labels = data.texts, data.labels
    members: dict[str, Member] = {}
    for ensemble in router.ensembles.values():
        for member in ensemble.members:
            members.setdefault(member.name, member)
    probs, figures = score_members(list(members.values()), data, console)
    forget_embeddings(members.values())
    started = time.perf_counter()
    judged = router.judge_routed(texts, [(k, "en") for k in kinds])
    fused = np.array([j.probabilities for j in judged]).reshape(-1, 3)
    return Evaluation(
        data=name, n=len(texts), ensemble=router.version, members=figures,
        fused=_figures(fused, labels, time.perf_counter() - started),
        probs={**probs, "fused (routed)": fused}, labels=labels,
        versus=_versus(probs, fused, labels),
    )  # fmt: skip


def score_members(
    members: Sequence[Member], data: LabelledSet, console: Console | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Each member's probabilities and figures, its docs/s its own (encoder included)."""
    probs, figures = {}, {}
    for member in members:
        if console:
            console.log(f"scoring {len(data.texts):,} texts with {member.name}")
        forget_embeddings(members)
        started = time.perf_counter()
        probs[member.name] = member.predict_proba(data.texts)
        figures[member.name] = _figures(
            probs[member.name], data.labels, time.perf_counter() - started
        )
    return probs, figures


def pruning_table(pruning: Pruning, units: Sequence[Unit]) -> Table:
    """What ``models fuse --prune`` left out, step by step, and what the rest costs."""
    out = Table(title=f"pruning: cross-validated on the fitting rows ({len(units)} units of cost)")
    for column in ("members", "share of the cost", "log-loss", "worse (standard error)",
                   "macro-F1"):  # fmt: skip
        out.add_column(column, justify="left" if column == "members" else "right")
    full = pruning.full
    out.add_row("all", "100%", f"{full['log_loss']:.4f}", "", f"{full['macro_f1']:.3f}")
    for i, step in enumerate(pruning.steps):  # each step leaves out one more unit
        out.add_row(("and without " if i else "without ") + ", ".join(step["names"]),
                    f"-{100 * step['share']:.0f}%", f"{step['log_loss']:.4f}",
                    f"{step['worse']:+.4f} ({step['standard_error']:.4f})",
                    f"{step['macro_f1']:.3f}")  # fmt: skip
    out.caption = (f"kept {len(pruning.kept)} members, {100 * pruning.cost_share:.0f}% of the cost"
                   if pruning.steps else "every unit of cost earns its place: none left out")  # fmt: skip
    return out


def table(evaluation: Evaluation) -> Table:
    out = Table(title=f"{evaluation.data}: {evaluation.n:,} texts, {evaluation.ensemble}")
    out.add_column("model")
    for metric in METRICS:
        out.add_column(metric.replace("_", " "), justify="right")
    out.add_column("fused macro f1 minus this (95%)", justify="right")
    rows = [*evaluation.members.items(), ("fused", evaluation.fused)]
    for name, figures in rows:
        versus = evaluation.versus.get(name)
        out.add_row(name, *(f"{figures[m]:.3f}" if m != "docs_per_s" else f"{figures[m]:,.0f}"
                           for m in METRICS), _interval(versus) if versus else "")  # fmt: skip
    return out


def markdown(evaluation: Evaluation) -> str:
    lines = [
        f"# Evaluation: {evaluation.data} ({evaluation.n:,} texts), ensemble {evaluation.ensemble}",
        "",
        "| model | " + " | ".join(METRICS) + " | fused macro_f1 minus this (95% interval) |",
        "|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for name, figures in [*evaluation.members.items(), ("**fused**", evaluation.fused)]:
        versus = evaluation.versus.get(name)
        cells = [f"{figures[m]:g}" for m in METRICS] + [_interval(versus) if versus else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Intervals: a paired bootstrap of the rows (2,000 resamples); an interval that "
              "holds 0 is a difference within the noise of this many rows."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(evaluation: Evaluation, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(evaluation.as_json(), indent=1) + "\n")
    (folder / "report.md").write_text(markdown(evaluation))
    models = list(evaluation.probs)
    panels = len(models) + 1
    columns = min(4, panels)
    rows = -(-panels // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.3 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.set_axis_off()
    axes = axes[:panels]
    for ax, name in zip(axes[:-1], models, strict=True):
        counts = confusion(evaluation.probs[name], evaluation.labels)
        ax.imshow(counts, cmap="Blues")
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > counts.max() / 2 else "black")  # fmt: skip
        ax.set_xticks(range(3), [label[:3] for label in LABELS])
        ax.set_yticks(range(3), [label[:3] for label in LABELS])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=9)
    ax = axes[-1]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name in models:
        points = reliability(evaluation.probs[name], evaluation.labels)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                label=name, linewidth=2.2 if name.startswith("fused") else 1)  # fmt: skip
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability", fontsize=9)
    ax.legend(fontsize=6)
    fig.suptitle(f"{evaluation.data}: {evaluation.n:,} texts", fontsize=10)
    fig.tight_layout()
    path = folder / "report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

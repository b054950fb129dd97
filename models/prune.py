"""Members an ensemble's fusion can do without: dropped when cross-validation says they add nothing.

Every member costs its forward pass on every document, whatever weight the fusion gives it: a soft
vote that weighs a fine-tuned member 0.01 still pays for that member's whole transformer. So
``riskwire models fuse --prune`` eliminates members backwards. The members are first grouped into
units of cost (heads over one encoder are one unit: they share its pass), each timed on the fitting
rows. Then, repeatedly, every unit that costs at least ``least_share`` of the ensemble is left out
in turn and the fusion cross-validated without it (fitted on K-1 folds of the fitting rows, scored on
the fold left out); the unit whose absence costs least is dropped if the fusion without it is at
most ``standard_errors`` standard errors worse than the whole ensemble in log-loss, the standard
error of the mean of the paired per-row differences (the one-standard-error rule of model
selection: what cross-validation cannot tell from noise, the cheaper ensemble gets), and its
macro-F1 at most ``f1_tolerance`` lower. Log-loss, because it judges the calibrated probabilities
the stream stores and the rules read; macro-F1 as well, because a fusion fitted by log-loss can give
up labels for calibration. The measure is always against the whole ensemble, so small losses cannot
add up step by step. (With a fixed tolerance of 0.01 nats instead, the trained `news` ensemble lost
`minilm-ft-fpb` too, 0.0058 nats worse with a standard error of 0.0047, and 0.007 of FPB test
macro-F1 with it.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.base import Member, forget_embeddings
from models.fusion import get_fusion
from models.training import evaluate

EPS = 1e-12


@dataclass(frozen=True)
class Unit:
    """Members that cost one pass together, and what the pass cost on the fitting rows."""

    members: tuple[int, ...]  # indices into the ensemble's members
    names: tuple[str, ...]
    seconds: float


@dataclass
class Pruning:
    kept: list[int]  # indices of the members kept, in the ensemble's order
    full: dict[str, float]  # the whole ensemble, cross-validated: log_loss, macro_f1
    steps: list[dict[str, Any]] = field(default_factory=list)  # per unit dropped, in order
    seconds: float = 0.0  # the whole ensemble's cost on the fitting rows

    @property
    def dropped(self) -> list[str]:
        return [name for step in self.steps for name in step["names"]]

    @property
    def cost_share(self) -> float:
        """What the kept members cost, as a share of the whole ensemble's cost."""
        saved = sum(step["seconds"] for step in self.steps)
        return 1.0 - saved / self.seconds if self.seconds else 1.0

    def summary(self) -> dict[str, Any]:
        steps = [step | {"seconds": round(step["seconds"], 3)} for step in self.steps]
        return {"dropped": self.dropped, "cross_validated": self.full, "steps": steps,
                "cost_share": round(self.cost_share, 3)}  # fmt: skip


def score_units(members: Sequence[Member], texts: Sequence[str]) -> tuple[np.ndarray, list[Unit]]:
    """Every member's probabilities, shape (members, texts, 3), and the units of cost: members
    sharing an encoder are timed together, the encoder's pass paid once (as the stream pays it)."""
    groups: dict[int, list[int]] = {}
    for i, member in enumerate(members):
        encoder = getattr(member, "encoder", None)
        groups.setdefault(id(encoder) if encoder is not None else -1 - i, []).append(i)
    probs: list[np.ndarray | None] = [None] * len(members)
    units = []
    for indices in groups.values():
        forget_embeddings(members)  # this unit pays for its own embeddings
        started = time.perf_counter()
        for i in indices:
            probs[i] = members[i].predict_proba(texts)
        seconds = time.perf_counter() - started
        units.append(Unit(tuple(indices), tuple(members[i].name for i in indices), seconds))
    return np.stack([p for p in probs if p is not None]), units


def cross_validated(
    probs: np.ndarray, labels: np.ndarray, fusion: str, weights: np.ndarray, folds: int = 5,
    seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """The fusion's out-of-fold answers on the fitting rows: each fold scored by a fusion fitted on
    the others. Log-loss and macro-F1 of those answers."""
    figures, _ = _out_of_fold(probs, labels, fusion, weights, folds, seed)
    return figures


def _out_of_fold(
    probs: np.ndarray, labels: np.ndarray, fusion: str, weights: np.ndarray, folds: int, seed: int
) -> tuple[dict[str, float], np.ndarray]:
    """``cross_validated``'s figures and each row's log-loss."""
    n = probs.shape[1]
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros((n, 3))
    with one_thread():
        for k in range(folds):
            held = fold == k
            fitted = get_fusion(fusion).fit(probs[:, ~held], labels[~held], weights)
            out[held] = fitted(probs[:, held], weights)
    losses = -np.log(np.clip(out[np.arange(n), labels], EPS, None))
    figures = {
        "log_loss": round(float(losses.mean()), 4),
        "macro_f1": round(evaluate(out, labels)["macro_f1"], 4),
    }
    return figures, losses


def prune(
    probs: np.ndarray,
    labels: np.ndarray,
    fusion: str,
    weights: np.ndarray,
    units: Sequence[Unit],
    standard_errors: float = 1.0,
    f1_tolerance: float = 0.005,
    least_share: float = 0.05,
    folds: int = 5,
) -> Pruning:
    """Backward elimination of units (module docstring). ``standard_errors``: how many standard
    errors of the paired difference the cross-validated log-loss may end above the whole
    ensemble's; ``f1_tolerance``: how much lower its macro-F1 may end."""
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=float)
    total = sum(u.seconds for u in units)
    keep = set(range(probs.shape[0]))
    full, base = _out_of_fold(probs, labels, fusion, weights, folds, seed=0)
    result = Pruning(kept=sorted(keep), full=full, seconds=total)
    left = [u for u in units if u.seconds >= least_share * total]

    def close_enough(figures: dict[str, float]) -> bool:
        return (figures["worse"] <= standard_errors * figures["standard_error"]
                and figures["macro_f1"] >= full["macro_f1"] - f1_tolerance)  # fmt: skip

    while True:
        trials = []
        for unit in left:
            rest = sorted(keep - set(unit.members))
            if rest:
                figures, losses = _out_of_fold(probs[rest], labels, fusion, weights[rest], folds, 0)
                worse = losses - base  # paired: the same rows, the same folds
                figures["worse"] = round(float(worse.mean()), 4)
                figures["standard_error"] = round(float(worse.std(ddof=1) / np.sqrt(len(worse))), 4)
                trials.append((figures, unit))
        fits = [(figures, unit) for figures, unit in trials if close_enough(figures)]
        if not fits:
            break
        figures, unit = min(fits, key=lambda t: (t[0]["log_loss"], -t[1].seconds))
        keep -= set(unit.members)
        left.remove(unit)
        result.steps.append({"names": list(unit.names), "seconds": unit.seconds,
                             "share": round(unit.seconds / total, 3), **figures})  # fmt: skip
    result.kept = sorted(keep)
    return result


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread while the fusions are fitted: their tensors are tiny, and a thread
    pool's hand-offs cost more than the arithmetic (a soft vote over 4 members and 300 rows: 0.08 s
    on one thread, 4.9 s on two while another process kept both cores busy)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Refitting an ensemble's fusion on analysts' labels, and judging the refit before it goes live.

The fusion was fitted on public validation rows (FPB, the tweets); the analysts' labels are rows
of the feeds a desk actually reads. Refitting the fusion on them is cheap (the members stay as
they are; only temperatures and weights, a stacker, or Dawid-Skene's confusions are learnt again),
but a few hundred labels can teach noise as easily as a shift in the feeds, so the refit has to
show on the labels themselves that it is better before it replaces the live fusion:

- the live fusion's answers are honest on the labels it was not fitted on, which is all of them
  for a fusion fitted on public rows. A live fusion that is itself a refit (promoted earlier)
  records a digest of each labelled text it was fitted on, with its label (``text_digest``),
  and is judged only on the others: on its own fitting rows it would look better than it is;
- the refit's answers on them are out of fold: the labelled rows are cut into ``folds`` by a hash
  of each text (copies of one text in one fold), and each fold is answered by a fusion fitted on
  the other folds (plus any ``extra`` rows, the public rows it was first fitted on, say);
- the refit is better when its mean log-loss on the rows judged is lower than the live fusion's
  by more than ``standard_errors`` (2) standard errors of the paired per-row difference, and its
  macro-F1 is not lower. What goes live is then a fusion fitted on every labelled row (and the
  extra ones).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.crossfit import fold_of
from models.exceptions import ModelError
from models.fusion import EPS, Fusion, get_fusion
from models.prune import one_thread
from models.training import evaluate, macro_f1_difference


@dataclass(frozen=True)
class RefitTrial:
    """The live fusion and the refit, side by side on the same labelled rows."""

    rows: int  # judged: the labelled rows the live fusion was not fitted on
    extra_rows: int
    folds: int
    live: dict[str, float]  # accuracy, macro_f1, weighted_f1, ece, log_loss
    refit: dict[str, float]  # the same, out of fold
    gain: float  # mean per-row log-loss, live minus refit: positive when the refit is better
    standard_error: float  # of that paired difference
    macro_f1: dict[str, float]  # refit minus live, with a paired bootstrap's 95% interval
    better: bool
    reason: str
    seen: int = 0  # labelled rows left out of the judgement: the live fusion was fitted on them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_digest(text: str, label: int) -> str:
    """What a refit records of each labelled row it was fitted on: a digest of the text and its
    label (a copy of the text has the same one; a text labelled again differently does not)."""
    return hashlib.sha256(f"{label}\t{text}".encode()).hexdigest()[:16]


def unseen(texts: Sequence[str], labels: Iterable[int], fitted_on: Iterable[str]) -> np.ndarray:
    """Which labelled rows are not among the digests ``fitted_on``: a boolean mask."""
    seen = set(fitted_on)
    return np.asarray(
        [text_digest(t, int(y)) not in seen for t, y in zip(texts, labels, strict=True)], bool
    )


def figures(probs: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, macro- and weighted-F1, ECE and mean log-loss; and each row's log-loss."""
    losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None))
    found = {k: round(v, 4) for k, v in evaluate(probs, labels).items()}
    return found | {"log_loss": round(float(losses.mean()), 4)}, losses


def refit_fusion(
    fusion: str,
    probs: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    extra_probs: np.ndarray | None = None,
    extra_labels: np.ndarray | None = None,
) -> Fusion:
    """``fusion`` fitted on the labelled rows and any extra ones, on one torch thread."""
    if extra_probs is not None and extra_labels is not None:
        probs = np.concatenate([probs, extra_probs], axis=1)
        labels = np.concatenate([labels, extra_labels])
    if not len(labels):
        raise ModelError("nothing to fit on: give more labels or --data rows")
    with one_thread():
        return get_fusion(fusion).fit(probs, labels, weights)


def out_of_fold(
    probs: np.ndarray,
    labels: np.ndarray,
    texts: Sequence[str],
    fusion: str,
    weights: np.ndarray,
    folds: int,
    extra_probs: np.ndarray | None = None,
    extra_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Each labelled row answered by ``fusion`` fitted without its fold (and with every extra
    row). Shape (rows, 3)."""
    if len(texts) != probs.shape[1] or len(labels) != probs.shape[1]:
        raise ModelError(
            f"{probs.shape[1]} rows of votes, {len(labels)} labels, {len(texts)} texts"
        )
    fold = np.asarray([fold_of(t, folds) for t in texts])
    out = np.zeros((probs.shape[1], 3))
    for k in range(folds):
        held = fold == k
        if held.any():
            fitted = refit_fusion(fusion, probs[:, ~held], labels[~held], weights, extra_probs,
                                  extra_labels)  # fmt: skip
            with one_thread():
                out[held] = fitted(probs[:, held], weights)
    return out


def judge_refit(
    probs: np.ndarray,
    labels: np.ndarray,
    texts: Sequence[str],
    live: Fusion,
    weights: np.ndarray,
    fusion: str,
    folds: int = 5,
    standard_errors: float = 2.0,
    extra_probs: np.ndarray | None = None,
    extra_labels: np.ndarray | None = None,
    judged: np.ndarray | None = None,
) -> RefitTrial:
    """The live fusion's answers on the labelled rows against the refit's out-of-fold ones
    (module docstring). ``probs``: the members' probabilities on the labelled rows, shape
    (members, rows, 3); ``judged``: a mask of the rows the live fusion was not fitted on (None:
    all of them). Every row is fitted on; only those are judged."""
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=float)
    if folds < 2:
        raise ModelError(f"judging a refit needs at least 2 folds, got {folds}")
    if len(labels) < folds:
        raise ModelError(f"{len(labels)} labelled rows cannot be cut into {folds} folds")
    judged = np.ones(len(labels), dtype=bool) if judged is None else np.asarray(judged, bool)
    seen = int((~judged).sum())
    if judged.sum() < 2:
        raise ModelError(f"the live fusion was fitted on {seen} of the {len(labels)} labelled "
                         "rows: too few others to judge it on")  # fmt: skip
    with one_thread():
        live_probs = live(probs[:, judged], weights)
    refit_probs = out_of_fold(probs, labels, texts, fusion, weights, folds, extra_probs,
                              extra_labels)[judged]  # fmt: skip
    labels = labels[judged]
    live_figures, live_losses = figures(live_probs, labels)
    refit_figures, refit_losses = figures(refit_probs, labels)
    gain = live_losses - refit_losses  # paired: the same rows
    mean = float(gain.mean())
    error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    f1 = {k: round(v, 4) for k, v in macro_f1_difference(labels, refit_probs, live_probs).items()}
    live_f1, refit_f1 = live_figures["macro_f1"], refit_figures["macro_f1"]
    if mean <= standard_errors * error:
        reason = (f"log-loss {refit_figures['log_loss']:.4f} against the live "
                  f"{live_figures['log_loss']:.4f}: a gain of {mean:.4f}, not over "
                  f"{standard_errors:g} standard error ({error:.4f})")  # fmt: skip
    elif refit_f1 < live_f1:
        reason = (f"macro-F1 {refit_f1:.4f} below the live {live_f1:.4f}, though the "
                  f"log-loss gained {mean:.4f}")  # fmt: skip
    else:
        reason = (f"log-loss {mean:.4f} lower (standard error {error:.4f}), macro-F1 "
                  f"{f1['difference']:+.4f} ({f1['low']:+.4f} to {f1['high']:+.4f})")  # fmt: skip
    if seen:
        reason += f" (on the {len(labels)} labels the live fusion was not fitted on)"
    better = mean > standard_errors * error and refit_f1 >= live_f1
    return RefitTrial(
        rows=len(labels), extra_rows=0 if extra_labels is None else len(extra_labels),
        folds=folds, live=live_figures, refit=refit_figures, gain=round(mean, 4),
        standard_error=round(error, 4), macro_f1=f1, better=better, reason=reason, seen=seen,
    )  # fmt: skip

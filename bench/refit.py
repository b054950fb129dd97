"""How many analysts' labels a refit of the fusion needs, and what it buys on text it never saw.

    riskwire bench refit --desk FILE.jsonl [--held FILE.jsonl] [--also FILE.jsonl]
                         [--keep FILE.jsonl ...] [--ensemble news] [--labels 50,100,300,1000]
                         [--fusion F] [--json]

A desk's labels are stood in for by a labelled set of the kind of text the desk reads (``--desk``,
its train split by the hash of each text, in a fixed shuffled order); for each number of labels,
the first that many are what ``riskwire labels refit`` would see: the refit is judged on them as
the command judges it (``models.refit.judge_refit``: out of fold, against the live fusion), then
fitted on all of them, and both fusions are scored on rows neither saw: ``--held`` (default: the
desk file's test split) and ``--also``'s test split (the text the ensemble was first fitted for,
say, to see what the desk's refit costs there). ``--keep`` files are fitted on beside the labels in
every fit, whole, as ``labels refit --data`` takes them (what the fusion was first fitted on: for
the shipped ensembles ``make heads`` fits on the validation splits that ``riskwire models split``
writes, and the packaged risk sentences). The members score every row once; only fusions are fitted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.ensemble import Ensemble
from models.prune import one_thread
from models.refit import figures, judge_refit, refit_fusion
from models.training import LabelledSet, macro_f1_difference


def _side_by_side(live: np.ndarray, refit: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {"live": figures(live, labels)[0], "refit": figures(refit, labels)[0],
            "macro_f1": macro_f1_difference(labels, refit, live)}  # fmt: skip


def run(
    ensemble: Ensemble,
    desk: LabelledSet,
    held: LabelledSet,
    counts: Sequence[int],
    also: LabelledSet | None = None,
    fusion: str | None = None,
    folds: int = 5,
    standard_errors: float = 2.0,
    seed: int = 0,
    keep: LabelledSet | None = None,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """``keep``: rows every fit holds beside the desk's labels (``labels refit --data``)."""
    strategy = fusion or ensemble.fusion_name
    order = np.random.default_rng(seed).permutation(len(desk))[: max(counts)]
    pool_texts = [desk.texts[i] for i in order]
    pool_labels = desk.labels[order]
    if max(counts) > len(order):
        say(f"the desk set holds {len(order):,} rows; counts above that use them all")
    say(f"scoring {len(pool_texts):,} desk rows, {len(held):,} held-out rows"
        + (f" and {len(also):,} more" if also is not None else "")
        + f" with {len(ensemble.members)} members")  # fmt: skip
    pool = ensemble.member_proba(pool_texts)
    held_probs = ensemble.member_proba(held.texts)
    also_probs = ensemble.member_proba(also.texts) if also is not None else None
    keep_probs = ensemble.member_proba(keep.texts) if keep is not None else None
    keep_labels = keep.labels if keep is not None else None
    with one_thread():
        live_held = ensemble.fusion(held_probs, ensemble.weights)
        live_also = (
            ensemble.fusion(also_probs, ensemble.weights) if also_probs is not None else None
        )
    rows = []
    for count in counts:
        n = min(count, len(pool_texts))
        say(f"{n:,} labels: judging the refit ({folds} folds) and fitting it")
        trial = judge_refit(pool[:, :n], pool_labels[:n], pool_texts[:n], ensemble.fusion,
                            ensemble.weights, strategy, folds, standard_errors, keep_probs,
                            keep_labels)  # fmt: skip
        refit = refit_fusion(strategy, pool[:, :n], pool_labels[:n], ensemble.weights,
                             keep_probs, keep_labels)  # fmt: skip
        with one_thread():
            refit_held = refit(held_probs, ensemble.weights)
            refit_also = refit(also_probs, ensemble.weights) if also_probs is not None else None
        row: dict[str, Any] = {
            "labels": n, "better": trial.better, "judged": {"live": trial.live, "refit": trial.refit},
            "held": _side_by_side(live_held, refit_held, held.labels),
        }  # fmt: skip
        if also is not None and refit_also is not None and live_also is not None:
            row["also"] = _side_by_side(live_also, refit_also, also.labels)
        rows.append(row)
    return {"ensemble": ensemble.version, "fusion": strategy, "held_rows": len(held),
            "also_rows": len(also) if also is not None else 0,
            "kept_rows": len(keep) if keep is not None else 0, "rows": rows}  # fmt: skip


def read_sets(
    desk: Path, held: Path | None, also: Path | None, keep: Sequence[Path] = ()
) -> tuple[LabelledSet, LabelledSet, LabelledSet | None, LabelledSet | None]:
    """The desk file's train split as the labels; its test split (or ``held``) as unseen rows;
    ``also``'s test split; ``keep`` whole."""
    whole = LabelledSet.read(desk)
    kept = [LabelledSet.read(p) for p in keep]
    return (
        whole.split("train"),
        LabelledSet.read(held) if held is not None else whole.split("test"),
        LabelledSet.read(also).split("test") if also is not None else None,
        LabelledSet.concat(kept) if kept else None,
    )

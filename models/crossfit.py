"""Out-of-fold member probabilities, so a fusion can be fitted on the rows the members trained on.

A fusion fitted on the validation split alone learns its weights from a few hundred rows, and
the fine-tuned members picked their best checkpoint on those same rows, so they look better there
than on new text. Cross-fitting gives the fusion more honest rows: the training rows are cut into
``k`` folds (by a hash of each text, like the splits), a copy of the member is trained on the other
folds (same settings, same validation split for early stopping) and scores the fold it did not
see. The copies are thrown away; what is kept is one file per member (``save``): the out-of-fold
probabilities by text key, and the keys of every row the member itself trained on, so that
``riskwire models fuse --oof`` can refuse a fitting row the member saw but has no out-of-fold
answer for.

Rows of other sets can stay in every copy's training (``fold_on`` names the sets that are cut):
the member fine-tuned on news and tweets is cross-fitted on the news rows the news ensemble fits
on, while every copy still learns from all the tweets.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.exceptions import ModelError
from models.training import LabelledSet

log = logging.getLogger(__name__)


def text_key(text: str) -> str:
    """A row's key: the hash of its normalised text (as ``split_of`` normalises it)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:16]


def fold_of(text: str, folds: int) -> int:
    """Which of ``folds`` folds a training row is in: a hash salted apart from the splits', so
    the folds do not follow the split boundaries; one text always lands in one fold."""
    digest = hashlib.sha256(("fold:" + " ".join(text.lower().split())).encode()).hexdigest()
    return int(digest[:8], 16) % folds


@dataclass(frozen=True)
class Fold:
    """One copy's training rows and the rows it scores."""

    number: int
    train: LabelledSet
    held: LabelledSet


def make_folds(fixed: LabelledSet, folded: LabelledSet, folds: int) -> list[Fold]:
    """``folded`` cut into ``folds`` by ``fold_of``; each copy trains on the others plus all of
    ``fixed``. Every fold must hold rows, and so must what each copy trains on."""
    if folds < 2:
        raise ModelError(f"cross-fitting needs at least 2 folds, got {folds}")
    if not len(folded):
        raise ModelError("cross-fitting needs training rows to cut into folds")
    assigned = np.asarray([fold_of(t, folds) for t in folded.texts])
    out = []
    for k in range(folds):
        rows, rest = np.flatnonzero(assigned == k), np.flatnonzero(assigned != k)
        if not len(rows) or not len(rest) + len(fixed):
            raise ModelError(f"fold {k} of {folds} is empty: use fewer folds or more rows")
        held = _subset(folded, rows, f"fold {k}/{folds}")
        train = LabelledSet.concat([fixed, _subset(folded, rest, f"not fold {k}/{folds}")])
        out.append(Fold(k, train, held))
    return out


def _subset(data: LabelledSet, rows: np.ndarray, what: str) -> LabelledSet:
    digest = hashlib.sha256(f"{data.sha256}:{what}".encode()).hexdigest()
    return LabelledSet([data.texts[i] for i in rows], data.labels[rows], digest)


@dataclass(frozen=True)
class OutOfFold:
    """A member's out-of-fold probabilities (rows in ``keys`` order) and what it trained on."""

    member: str
    keys: list[str]
    proba: np.ndarray  # (rows, 3), canonical label order
    seen: frozenset[str]  # keys of every row the member itself trained on

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:  # (np.savez adds ".npz" to a str path without it)
            np.savez(
                handle, member=np.asarray(self.member), keys=np.asarray(self.keys, dtype="U16"),
                proba=self.proba, seen=np.asarray(sorted(self.seen), dtype="U16"),
            )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> OutOfFold:
        try:
            with np.load(path, allow_pickle=False) as body:
                member, keys, proba = str(body["member"]), body["keys"].tolist(), body["proba"]
                seen = frozenset(body["seen"].tolist())
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read out-of-fold probabilities {path}: {exc}") from exc
        if proba.shape != (len(keys), 3):
            raise ModelError(f"{path}: {len(keys)} keys but probabilities {proba.shape}")
        return cls(member, keys, proba, seen)


Scorer = Callable[[Fold], np.ndarray]  # trains a copy on fold.train, returns its probs on held


def cross_fit(
    member: str, fixed: LabelledSet, folded: LabelledSet, folds: int, score: Scorer
) -> OutOfFold:
    """Train a copy per fold (``score``) and gather the out-of-fold probabilities."""
    keys: list[str] = []
    parts: list[np.ndarray] = []
    for fold in make_folds(fixed, folded, folds):
        log.info("%s: fold %d/%d, %d training rows, %d held out", member, fold.number + 1,
                 folds, len(fold.train), len(fold.held))  # fmt: skip
        proba = np.asarray(score(fold), dtype=np.float64)
        if proba.shape != (len(fold.held), 3):
            raise ModelError(f"fold {fold.number}: got {proba.shape} for {len(fold.held)} rows")
        keys += [text_key(t) for t in fold.held.texts]
        parts.append(proba)
    seen = frozenset(text_key(t) for t in (*fixed.texts, *folded.texts))
    return OutOfFold(member, keys, np.concatenate(parts), seen)


def apply_out_of_fold(
    probs: np.ndarray, names: Sequence[str], texts: Sequence[str], files: dict[str, OutOfFold]
) -> dict[str, int]:
    """Replace, in place, each member's probabilities (``probs``: members × texts × 3) by its
    out-of-fold ones on the rows it trained on. A row a member trained on without an out-of-fold
    answer is an error (its own answer there would flatter it). Returns rows replaced per member."""
    keys = [text_key(t) for t in texts]
    replaced: dict[str, int] = {}
    for j, name in enumerate(names):
        oof = files.get(name)
        if oof is None:
            continue
        # a text in two folds' rows (FPB repeats sentences) has one key, so one answer
        answer = {k: oof.proba[i] for i, k in enumerate(oof.keys)}
        count = 0
        for i, key in enumerate(keys):
            if key in answer:
                probs[j, i] = answer[key]
                count += 1
            elif key in oof.seen:
                raise ModelError(
                    f"member {name!r} trained on the fitting row {texts[i][:60]!r} but its "
                    "out-of-fold file has no answer for it: cross-fit it on that set (--fold-on)"
                )
        replaced[name] = count
    return replaced

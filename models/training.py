"""Fit the embedding head: multinomial logistic regression on frozen sentence embeddings.

Deterministic: full-batch L-BFGS from zeros, so the same data and encoder give the same head.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.embedding import Head, SentenceEncoder
from models.exceptions import ModelError
from riskwire.records import LABELS

log = logging.getLogger(__name__)
DEFAULT_TRAIN_SET = Path(__file__).resolve().parent / "data" / "train.jsonl"


SPLITS = {"train": (0, 70), "val": (70, 85), "test": (85, 100)}


def split_of(text: str) -> str:
    """train / val / test by a hash of the normalised text: stable across runs and machines, and
    a sentence repeated in a set (FPB has some) always lands in the same split."""
    bucket = int(hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:8], 16) % 100
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= bucket < hi)


@dataclass(frozen=True)
class LabelledSet:
    texts: list[str]
    labels: np.ndarray  # class indices in LABELS order
    sha256: str

    @classmethod
    def read(cls, path: Path) -> LabelledSet:
        """JSONL (one object per line) or CSV (a header with ``text`` and ``label``)."""
        raw = path.read_bytes()
        rows = _csv_rows(path, raw) if path.suffix.lower() == ".csv" else _jsonl_rows(path, raw)
        texts, labels = [], []
        for where, row in rows:
            if (
                not isinstance(row, dict)
                or row.get("label") not in LABELS
                or not str(row.get("text", "")).strip()
            ):
                raise ModelError(f"{path}:{where}: needs 'text' and a label in {LABELS}")
            texts.append(str(row["text"]))
            labels.append(LABELS.index(row["label"]))
        return cls(texts, np.asarray(labels, dtype=np.int64), hashlib.sha256(raw).hexdigest())

    @classmethod
    def read_many(cls, paths: Sequence[Path]) -> LabelledSet:
        return cls.concat([cls.read(p) for p in paths])

    @classmethod
    def concat(cls, parts: Sequence[LabelledSet]) -> LabelledSet:
        if len(parts) == 1:
            return parts[0]
        digest = hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest()
        return cls(
            [t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]), digest
        )

    def split(self, name: str) -> LabelledSet:
        """One of ``SPLITS``; its hash says which rows of this set it holds."""
        if name not in SPLITS:
            raise ModelError(f"unknown split {name!r}; choose one of {sorted(SPLITS)}")
        keep = [i for i, t in enumerate(self.texts) if split_of(t) == name]
        digest = hashlib.sha256(f"{self.sha256}:{name}".encode()).hexdigest()
        return LabelledSet([self.texts[i] for i in keep], self.labels[keep], digest)

    def __len__(self) -> int:
        return len(self.texts)


def _jsonl_rows(path: Path, raw: bytes) -> list[tuple[int, object]]:
    rows = []
    # split on newlines only: str.splitlines also breaks at U+2028 and friends inside tweets
    for number, line in enumerate(raw.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}:{number}: not valid JSON: {exc}") from exc
    return rows


def _csv_rows(path: Path, raw: bytes) -> list[tuple[int, object]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
        raise ModelError(f"{path}: a CSV needs a header with 'text' and 'label' columns")
    return [(reader.line_num, row) for row in reader]


def fit_softmax(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 200) -> Head:
    import torch

    torch.manual_seed(0)
    features = torch.from_numpy(x.astype(np.float32))
    targets = torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(x.shape[1], 3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = features @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, targets) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return Head(weight.detach().numpy(), bias.detach().numpy(), {})


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: int,
    l2: float = 1e-3,
    seed: int = 0,
    batch_size: int = 64,
    patience: int = 10,
    max_epochs: int = 300,
) -> Head:
    """A head with one ReLU layer of ``hidden`` units, trained by Adam with L2 weight decay on
    90% of the rows; it stops when the log-loss on the other 10% (every tenth row of a seeded
    permutation) has not improved for ``patience`` epochs, and keeps the best epoch's weights.
    Same rows, seed and thread count: the same head."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    held = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)) % 10 == 0)
    features = torch.from_numpy(x.astype(np.float32))
    targets = torch.from_numpy(y.astype(np.int64))
    if held.all() or not held.any():
        raise ModelError(f"an MLP head needs at least 2 rows, got {len(y)}")
    fit_x, fit_y, stop_x, stop_y = features[~held], targets[~held], features[held], targets[held]
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=l2)

    def snapshot() -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    best, best_state, stale = float("inf"), snapshot(), 0
    for _ in range(max_epochs):
        order = torch.randperm(len(fit_y), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(net(fit_x[rows]), fit_y[rows]).backward()
            optimiser.step()
        with torch.no_grad():
            loss = float(torch.nn.functional.cross_entropy(net(stop_x), stop_y))
        if loss < best - 1e-4:
            best, best_state, stale = loss, snapshot(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    first, last = best_state["0.weight"].numpy(), best_state["2.weight"].numpy()
    return Head(
        last.T.copy(), best_state["2.bias"].numpy(), {},
        hidden=(first.T.copy(), best_state["0.bias"].numpy()),
    )  # fmt: skip


def accuracy(head: Head, x: np.ndarray, y: np.ndarray) -> float:
    predictions = np.argmax(head.logits(x), axis=1)
    return float((predictions == y).mean())


def train_head(
    encoder: SentenceEncoder,
    data: LabelledSet,
    l2: float | None = None,
    folds: int = 5,
    name: str = "minilm-head",
    hidden: int = 0,
) -> Head:
    """Fit on all rows (linear, or with a hidden layer of ``hidden`` units); report k-fold
    cross-validated accuracy in the head's metadata. ``l2`` defaults to 1e-4 for a linear head
    and 1e-3 (Adam's weight decay) for one with a hidden layer."""
    if l2 is None:
        l2 = 1e-3 if hidden else 1e-4

    def fit(x: np.ndarray, y: np.ndarray) -> Head:
        return fit_mlp(x, y, hidden, l2) if hidden else fit_softmax(x, y, l2)

    x = encoder.encode(data.texts)
    y = data.labels
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(y)) % folds
    scores = []
    for k in range(folds):
        held = fold_of == k
        scores.append(accuracy(fit(x[~held], y[~held]), x[held], y[held]))
        log.info("fold %d/%d accuracy %.3f", k + 1, folds, scores[-1])
    head = fit(x, y)
    head.meta = {
        "version": f"{name}-{head.digest()}",
        "encoder": encoder.name,
        "train_sha256": data.sha256,
        "train_rows": len(y),
        "l2": l2,
        **({"hidden": hidden} if hidden else {}),
        "cv_accuracy": round(float(np.mean(scores)), 4),
    }
    return head


def evaluate(member_proba: np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy, macro and weighted F1 and expected calibration error against class indices."""
    y = np.asarray(labels)
    probs = np.asarray(member_proba)
    pred = np.argmax(probs, axis=1)
    f1s, support = [], []
    for c in range(3):
        tp = float(((pred == c) & (y == c)).sum())
        fp = float(((pred == c) & (y != c)).sum())
        fn = float(((pred != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        support.append(float((y == c).sum()))
    total = max(sum(support), 1.0)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(np.mean(f1s)),
        "weighted_f1": float(sum(f * s for f, s in zip(f1s, support, strict=True)) / total),
        "ece": expected_calibration_error(probs, y),
        "n": len(y),
    }


def macro_f1_difference(
    labels: Sequence[int] | np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Macro-F1 of ``first`` minus ``second`` (probabilities or class indices for the same rows), with
    a paired bootstrap's percentile interval: each resample draws rows with replacement and scores
    both on the same draw, so what the two share (the hard rows) cancels out."""
    y = np.asarray(labels)
    predicted = [
        p if p.ndim == 1 else np.argmax(p, axis=1) for p in map(np.asarray, (first, second))
    ]
    rng = np.random.default_rng(seed)
    uniform = np.full(len(y), 1.0 / len(y))
    # each resample as how often it draws each row, a block of resamples at a time (about 4 M
    # counts), so a large set does not hold resamples x rows at once
    block = max(1, min(resamples, 4_000_000 // max(len(y), 1)))

    def macro(pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
        f1s = []
        for c in range(3):
            tp = weights @ ((pred == c) & (y == c))
            wrong = weights @ (((pred == c) & (y != c)) | ((pred != c) & (y == c)))
            f1s.append(np.divide(2 * tp, 2 * tp + wrong, out=np.zeros_like(tp), where=tp > 0))
        return np.mean(f1s, axis=0)

    parts = []
    for done in range(0, resamples, block):
        draws = rng.multinomial(len(y), uniform, size=min(block, resamples - done)).astype(float)
        parts.append(macro(predicted[0], draws) - macro(predicted[1], draws))
    difference = np.concatenate(parts)
    ones = np.ones((1, len(y)))
    whole = macro(predicted[0], ones) - macro(predicted[1], ones)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(difference, [tail, 100 - tail])
    return {"difference": float(whole[0]), "low": float(low), "high": float(high)}


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = 10
) -> list[tuple[float, float, int]]:
    """Per confidence bin: (mean confidence, accuracy, count), for the top-label probability."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            out.append((float(confidence[inside].mean()), float(correct[inside].mean()),
                        int(inside.sum())))  # fmt: skip
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: the count-weighted gap between confidence and accuracy over 10 equal bins."""
    n = len(labels)
    if not n:
        return 0.0
    return float(sum(c * abs(conf - acc) for conf, acc, c in reliability(probs, labels, bins)) / n)


def confusion(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((3, 3), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(probs).argmax(axis=1)), 1)
    return counts

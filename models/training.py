"""Fit the embedding head: multinomial logistic regression on frozen sentence embeddings.

Deterministic: full-batch L-BFGS from zeros, so the same data and encoder give the same head.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.embedding import Head, SentenceEncoder
from models.exceptions import ModelError
from riskwire.records import LABELS

log = logging.getLogger(__name__)
DEFAULT_TRAIN_SET = Path(__file__).resolve().parent / "data" / "train.jsonl"


@dataclass(frozen=True)
class LabelledSet:
    texts: list[str]
    labels: np.ndarray  # class indices in LABELS order
    sha256: str

    @classmethod
    def read(cls, path: Path) -> LabelledSet:
        texts, labels = [], []
        raw = path.read_bytes()
        # split on newlines only: str.splitlines also breaks at U+2028 and friends inside tweets
        for number, line in enumerate(raw.decode("utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{path}:{number}: not valid JSON: {exc}") from exc
            if (
                not isinstance(row, dict)
                or row.get("label") not in LABELS
                or not str(row.get("text", "")).strip()
            ):
                raise ModelError(f"{path}:{number}: needs 'text' and a label in {LABELS}")
            texts.append(str(row["text"]))
            labels.append(LABELS.index(row["label"]))
        return cls(texts, np.asarray(labels), hashlib.sha256(raw).hexdigest())


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


def accuracy(head: Head, x: np.ndarray, y: np.ndarray) -> float:
    predictions = np.argmax(x @ head.weight + head.bias, axis=1)
    return float((predictions == y).mean())


def train_head(
    encoder: SentenceEncoder, data: LabelledSet, l2: float = 1e-3, folds: int = 5
) -> Head:
    """Fit on all rows; report k-fold cross-validated accuracy in the head's metadata."""
    x = encoder.encode(data.texts)
    y = data.labels
    rng = np.random.default_rng(0)
    fold_of = rng.permutation(len(y)) % folds
    scores = []
    for k in range(folds):
        held = fold_of == k
        scores.append(accuracy(fit_softmax(x[~held], y[~held], l2), x[held], y[held]))
        log.info("fold %d/%d accuracy %.3f", k + 1, folds, scores[-1])
    head = fit_softmax(x, y, l2)
    digest = hashlib.sha256(head.weight.tobytes() + head.bias.tobytes()).hexdigest()[:10]
    head.meta = {
        "version": f"minilm-head-{digest}",
        "encoder": encoder.name,
        "train_sha256": data.sha256,
        "train_rows": len(y),
        "l2": l2,
        "cv_accuracy": round(float(np.mean(scores)), 4),
    }
    return head


def evaluate(member_proba: np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 of probabilities against class indices."""
    y = np.asarray(labels)
    pred = np.argmax(member_proba, axis=1)
    f1s = []
    for c in range(3):
        tp = float(((pred == c) & (y == c)).sum())
        fp = float(((pred == c) & (y != c)).sum())
        fn = float(((pred != c) & (y == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1s)), "n": len(y)}

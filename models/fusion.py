"""Fusion strategies: turn the members' probabilities into one calibrated judgement.

A strategy takes ``probs`` of shape (members, documents, 3) and member weights, and returns fused
probabilities of shape (documents, 3). Strategies are chosen by name from ``FUSIONS``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.exceptions import ModelError

Fusion = Callable[[np.ndarray, np.ndarray], np.ndarray]


def soft_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the members' probability vectors."""
    w = weights / weights.sum()
    return np.asarray(np.tensordot(w, probs, axes=1))


def majority_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted share of members voting for each label (ties keep their shares)."""
    votes = np.zeros_like(probs)
    np.put_along_axis(votes, probs.argmax(axis=2)[..., None], 1.0, axis=2)
    return soft_vote(votes, weights)


FUSIONS: dict[str, Fusion] = {"soft": soft_vote, "majority": majority_vote}


def get_fusion(name: str) -> Fusion:
    try:
        return FUSIONS[name]
    except KeyError:
        raise ModelError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}") from None


def disagreement(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Jensen-Shannon divergence among members, scaled to [0, 1] by its bound."""
    members = probs.shape[0]
    if members < 2:
        return np.zeros(probs.shape[1])
    w = weights / weights.sum()
    mean = np.tensordot(w, probs, axes=1)
    js = _entropy(mean) - np.tensordot(w, _entropy(probs), axes=1)
    bound = -np.sum(w * np.log(w)) if np.all(w > 0) else np.log(members)
    return np.asarray(np.clip(js / min(bound, np.log(3)), 0.0, 1.0))


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return np.asarray(-(q * np.log(q)).sum(axis=-1))

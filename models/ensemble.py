"""An ensemble is itself a member: it runs its members on a batch and fuses their probabilities."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base import Member
from models.exceptions import ModelError
from models.fusion import Fusion, disagreement, get_fusion
from riskwire.records import LABELS, Label, Probabilities, Vote


@dataclass(frozen=True)
class Judgement:
    """The fused result for one text, with every member's vote."""

    label: Label
    probabilities: Probabilities
    score: float
    confidence: float
    disagreement: float
    votes: tuple[Vote, ...]


class Ensemble(Member):
    def __init__(
        self,
        members: Sequence[Member],
        weights: Sequence[float] | None = None,
        fusion: str | Fusion = "soft",
        name: str = "ensemble",
    ) -> None:
        if not members:
            raise ModelError("an ensemble needs at least one member")
        self.members = list(members)
        self.weights = np.asarray(weights if weights is not None else [1.0] * len(members), float)
        if self.weights.shape != (len(members),) or np.any(self.weights < 0):
            raise ModelError(f"need {len(members)} non-negative weights, got {weights!r}")
        if self.weights.sum() <= 0:
            raise ModelError("member weights must not all be zero")
        self.fusion = get_fusion(fusion) if isinstance(fusion, str) else fusion
        self.fusion_name = self.fusion.name
        self.name = name
        self._sign()

    def _sign(self) -> None:
        """The version names members, weights, fusion and the fusion's fitted parameters."""
        signature = "|".join(
            [
                self.fusion_name,
                json.dumps(self.fusion.params(), sort_keys=True),
                *(f"{m.version}:{w:g}" for m, w in zip(self.members, self.weights, strict=True)),
            ]
        )
        self.version = f"{self.name}-{hashlib.sha256(signature.encode()).hexdigest()[:10]}"

    def fit_fusion(
        self, texts: Sequence[str], labels: np.ndarray | None, probs: np.ndarray | None = None
    ) -> np.ndarray:
        """Fit the fusion on a validation split (labels may be None for Dawid-Skene); returns the
        members' probabilities on it, shape (members, texts, 3). ``probs``: those probabilities
        already (out-of-fold ones, say), instead of the members' answers now."""
        if probs is None:
            probs = self.member_proba(texts)
        elif probs.shape != (len(self.members), len(texts), 3):
            raise ModelError(
                f"probs {probs.shape} for {len(self.members)} members, {len(texts)} texts"
            )
        self.fusion.fit(probs, labels, self.weights)
        self._sign()
        return probs

    def _forward(
        self, batch: list[str]
    ) -> np.ndarray:  # pragma: no cover - predict_proba overrides
        return self.predict_proba(batch)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "ensemble",
            "fusion": self.fusion.describe(),
            "members": [m.version for m in self.members],
            "weights": self.weights.tolist(),
        }

    def registry_entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, version, description) for the ensemble and each member, for the model registry."""
        return [(self.name, self.version, self.describe())] + [
            (m.name, m.version, m.describe()) for m in self.members
        ]

    def member_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (members, texts, 3)."""
        return np.stack([m.predict_proba(texts) for m in self.members])

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.fusion(self.member_proba(texts), self.weights)

    def judge_routed(self, texts: Sequence[str], keys: Sequence[Any]) -> list[Judgement]:
        """What a router does with documents' (kind, lang) keys; one ensemble judges them all."""
        return self.judge(texts)

    def judge_versioned(
        self, texts: Sequence[str], keys: Sequence[Any]
    ) -> tuple[str, list[Judgement]]:
        return self.version, self.judge_routed(texts, keys)

    def judge(self, texts: Sequence[str]) -> list[Judgement]:
        if not texts:
            return []
        probs = self.member_proba(texts)
        fused = self.fusion(probs, self.weights)
        spread = disagreement(probs, self.weights)
        results = []
        for i, p in enumerate(fused):
            p = np.clip(p, 0.0, 1.0)
            results.append(
                Judgement(
                    label=LABELS[int(np.argmax(p))],  # type: ignore[arg-type]
                    probabilities=(float(p[0]), float(p[1]), float(p[2])),
                    score=float(np.clip(p[2] - p[0], -1.0, 1.0)),
                    confidence=float(np.max(p)),
                    disagreement=float(spread[i]),
                    votes=tuple(m.vote_from(probs[j, i]) for j, m in enumerate(self.members)),
                )
            )
        return results

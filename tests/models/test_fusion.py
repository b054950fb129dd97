"""Fusion strategies on synthetic votes whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ModelError
from models.fusion import FUSIONS, DawidSkene, MajorityVote, SoftVote, Stacking, get_fusion
from models.training import evaluate


def one_hot(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    p = np.full((len(labels), 3), (1 - confidence) / 2)
    p[np.arange(len(labels)), labels] = confidence
    return p


def annotators(truth: np.ndarray, accuracies: list[float], seed: int = 0) -> np.ndarray:
    """Members that give the true label with their accuracy, else a uniformly wrong one."""
    rng = np.random.default_rng(seed)
    out = []
    for accuracy in accuracies:
        right = rng.random(len(truth)) < accuracy
        wrong = (truth + rng.integers(1, 3, len(truth))) % 3
        out.append(one_hot(np.where(right, truth, wrong), 0.8))
    return np.stack(out)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-9, 1)).mean())


TRUTH = np.random.default_rng(42).integers(0, 3, 3000)


def test_majority_follows_the_most_members() -> None:
    probs = np.stack([one_hot(np.array([2, 0])), one_hot(np.array([2, 1])),
                      one_hot(np.array([0, 1]))])  # fmt: skip
    fused = MajorityVote()(probs, np.ones(3))
    assert fused.argmax(axis=1).tolist() == [2, 1]
    assert np.allclose(fused[0], [1 / 3, 0, 2 / 3])


def test_soft_vote_learns_temperatures_and_trusts_the_better_member() -> None:
    y = TRUTH
    good = annotators(y, [0.85], seed=1)[0]
    overconfident = one_hot(annotators(y, [0.6], seed=2)[0].argmax(axis=1), 0.995)
    probs = np.stack([good, overconfident])
    fusion = SoftVote().fit(probs, y, np.ones(2))
    # the overconfident member is softened, and gets less weight than the good one
    assert fusion.temperatures is not None and fusion.temperatures[1] > 2.0
    assert fusion.learned_weights is not None
    assert fusion.learned_weights[0] > fusion.learned_weights[1]
    fitted = fusion(probs, np.ones(2))
    assert nll(fitted, y) < nll(SoftVote()(probs, np.ones(2)), y)
    assert nll(fitted, y) <= min(nll(good, y), nll(overconfident, y)) + 1e-6
    reloaded = SoftVote.from_params(fusion.params())
    assert np.allclose(reloaded(probs, np.ones(2)), fitted, atol=1e-5)


def test_stacking_learns_that_a_member_says_the_opposite() -> None:
    y = TRUTH
    honest = annotators(y, [0.7], seed=3)[0]
    # a member that is always right but names negative "positive" and vice versa
    swapped = one_hot(np.array([2, 1, 0])[y], 0.9)
    probs = np.stack([honest, swapped])
    majority = evaluate(MajorityVote()(probs, np.ones(2)), y)["accuracy"]
    stacking = Stacking().fit(probs[:, :2000], y[:2000], np.ones(2))
    held_out = evaluate(stacking(probs[:, 2000:], np.ones(2)), y[2000:])["accuracy"]
    assert held_out > 0.99 > majority + 0.3
    reloaded = Stacking.from_params(stacking.params())
    assert np.allclose(reloaded(probs[:, :10], np.ones(2)), stacking(probs[:, :10], np.ones(2)))


def test_dawid_skene_finds_the_reliable_members_without_labels() -> None:
    y = TRUTH
    # two good members, three near-random ones: majority vote is dragged down, DS is not
    probs = annotators(y, [0.9, 0.85, 0.4, 0.4, 0.4], seed=4)
    fusion = DawidSkene().fit(probs, None, np.ones(5))
    ds = evaluate(fusion(probs, np.ones(5)), y)["accuracy"]
    majority = evaluate(MajorityVote()(probs, np.ones(5)), y)["accuracy"]
    assert ds > majority + 0.05 and ds > 0.88
    # the learnt confusion matrices: diagonal near each member's accuracy
    assert fusion.confusion is not None
    diagonal = np.array([np.diag(m).mean() for m in fusion.confusion])
    assert np.allclose(diagonal, [0.9, 0.85, 0.4, 0.4, 0.4], atol=0.05)
    assert np.allclose(fusion.prior, np.bincount(y) / len(y), atol=0.03)
    reloaded = DawidSkene.from_params(fusion.params())
    assert np.allclose(reloaded(probs, np.ones(5)), fusion(probs, np.ones(5)), atol=1e-5)


def test_unfitted_and_mismatched_fusions_say_so() -> None:
    probs = annotators(TRUTH[:10], [0.9, 0.8])
    with pytest.raises(ModelError, match="has not been fitted"):
        Stacking()(probs, np.ones(2))
    with pytest.raises(ModelError, match="needs labels"):
        Stacking().fit(probs, None, np.ones(2))
    fitted = Stacking().fit(probs, TRUTH[:10], np.ones(2))
    with pytest.raises(ModelError, match="fitted on 2 members, got 3"):
        fitted(np.concatenate([probs, probs[:1]]), np.ones(3))
    with pytest.raises(ModelError, match="shape"):
        MajorityVote()(probs[0], np.ones(2))
    assert set(FUSIONS) == {"majority", "soft", "stacking", "dawid-skene"}
    assert get_fusion("dawid-skene").describe() == {"strategy": "dawid-skene", "fitted": False}

"""Pruning an ensemble's members (``models.prune``) on synthetic votes where the answer is known."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.base import Member
from models.prune import Pruning, Unit, cross_validated, prune, score_units

N = 450
FOLDS = 3  # fewer fits than the command's 5: the same logic, a faster test


def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, N)


def informed(y: np.ndarray, right: float, seed: int) -> np.ndarray:
    """A member that gives the true class ``right`` of the time, confidently, else a random one."""
    rng = np.random.default_rng(seed)
    guess = np.where(rng.random(N) < right, y, rng.integers(0, 3, N))
    probs = np.full((N, 3), 0.1)
    probs[np.arange(N), guess] = 0.8
    return probs


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet([1, 1, 1], N)


def units(*seconds: float) -> list[Unit]:
    return [Unit((i,), (f"m{i}",), s) for i, s in enumerate(seconds)]


@pytest.mark.parametrize("fusion", ["soft", "stacking"])
def test_a_member_that_adds_nothing_is_dropped_and_one_that_adds_something_is_kept(
    fusion: str,
) -> None:
    y = labels()
    strong = informed(y, 0.8, 1)
    # m0 strong; m1 a noisy copy of m0 (the same errors: nothing new); m2 pure noise; m3 a weak
    # member with errors of its own, too cheap to be worth leaving out
    copy = 0.9 * strong + 0.1 * noise(2)
    probs = np.stack([strong, copy, noise(3), informed(y, 0.5, 4)])
    result = prune(probs, y, fusion, np.ones(4), units(1.0, 1.0, 1.0, 0.01), folds=FOLDS)
    assert "m2" in result.dropped
    assert len({0, 1} & set(result.kept)) == 1  # one of the two alike, whichever costs less to lose
    assert 3 in result.kept  # under 5% of the cost: never a candidate
    for step in result.steps:  # within one standard error of the whole ensemble, every step
        assert step["worse"] <= step["standard_error"]
        assert step["macro_f1"] >= result.full["macro_f1"] - 0.005
    assert result.cost_share == pytest.approx(1.01 / 3.01)
    again = prune(probs, y, fusion, np.ones(4), units(1.0, 1.0, 1.0, 0.01), folds=FOLDS)
    assert again.kept == result.kept and again.steps == result.steps  # deterministic


def test_members_that_each_know_something_the_other_does_not_are_all_kept() -> None:
    y = labels()
    rng = np.random.default_rng(5)
    # m0 tells negative from the rest; m1 neutral from positive, and calls a negative one of those
    # at random: alone each is a third blind
    first = np.where((y == 0)[:, None], [0.8, 0.1, 0.1], [0.1, 0.45, 0.45])
    seen = np.where(y == 0, rng.integers(1, 3, N), y)
    second = np.where((seen == 1)[:, None], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    probs = np.stack([first, second]) + rng.uniform(0, 0.01, (2, N, 3))
    probs /= probs.sum(axis=2, keepdims=True)
    result = prune(probs, y, "stacking", np.ones(2), units(1.0, 1.0), folds=FOLDS)
    assert result.kept == [0, 1] and not result.steps and result.cost_share == 1.0
    assert result.full["macro_f1"] > 0.95


def test_the_margin_is_measured_against_the_whole_ensemble_not_the_last_step() -> None:
    y = labels()
    # four members, each right 60% of the time with errors of their own: dropping any one costs
    # something, dropping more costs more (to a stacker: its log-linear vote suits such errors)
    probs = np.stack([informed(y, 0.6, seed) for seed in range(10, 14)])

    def pruned(standard_errors: float, f1_tolerance: float) -> Pruning:
        return prune(probs, y, "stacking", np.ones(4), units(1, 1, 1, 1), folds=FOLDS,
                     standard_errors=standard_errors, f1_tolerance=f1_tolerance)  # fmt: skip

    assert pruned(1.0, 0.005).kept == [0, 1, 2, 3]  # each member gone costs more than the noise
    some = pruned(20.0, 0.06)
    assert some.steps and len(some.kept) > 1  # not all the way down to one
    for step in some.steps:
        assert step["worse"] <= 20 * step["standard_error"]
        assert step["macro_f1"] >= some.full["macro_f1"] - 0.06
    worse = [step["worse"] for step in some.steps]
    assert worse == sorted(worse) and worse[0] > 0  # always against the whole ensemble


def test_cross_validated_figures_are_out_of_fold() -> None:
    """A stacker scored on rows it was fitted on would find a pattern in pure noise; out of fold
    it cannot do better than the prior."""
    y = labels()
    probs = np.stack([noise(20), noise(21)])
    figures = cross_validated(probs, y, "stacking", np.ones(2), folds=FOLDS)
    assert figures["log_loss"] >= np.log(3) - 0.02
    assert figures["macro_f1"] < 0.42


class Encoder:
    def __init__(self) -> None:
        self.passes = 0
        self.memo: tuple[str, ...] | None = None

    def embed(self, texts: Sequence[str]) -> None:
        if self.memo != tuple(texts):
            self.passes += 1
            self.memo = tuple(texts)

    def forget(self) -> None:
        self.memo = None


class Headed(Member):
    def __init__(self, name: str, encoder: Encoder, probs: Sequence[float]) -> None:
        self.name, self.version, self.encoder, self.probs = name, name, encoder, probs

    def _forward(self, batch: list[str]) -> np.ndarray:
        self.encoder.embed(batch)
        return np.log(np.tile(self.probs, (len(batch), 1)))


class Alone(Headed):
    def __init__(self, name: str, probs: Sequence[float]) -> None:
        self.name, self.version, self.probs = name, name, probs
        self.encoder = None  # type: ignore[assignment]

    def _forward(self, batch: list[str]) -> np.ndarray:
        return np.log(np.tile(self.probs, (len(batch), 1)))


def test_heads_over_one_encoder_are_one_unit_of_cost_their_pass_paid_once() -> None:
    shared = Encoder()
    members = [Headed("a", shared, [0.2, 0.5, 0.3]), Alone("lex", [0.6, 0.2, 0.2]),
               Headed("b", shared, [0.1, 0.1, 0.8])]  # fmt: skip
    probs, found = score_units(members, ["one", "two", "three"])
    assert probs.shape == (3, 3, 3)
    assert np.allclose(probs[2], [[0.1, 0.1, 0.8]] * 3) and np.allclose(
        probs[1][0], [0.6, 0.2, 0.2]
    )
    assert sorted(u.members for u in found) == [(0, 2), (1,)]
    assert {u.names for u in found} == {("a", "b"), ("lex",)}
    assert shared.passes == 1 and all(u.seconds >= 0 for u in found)

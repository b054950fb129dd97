from __future__ import annotations

import numpy as np
import pytest

from models.ensemble import Ensemble
from models.exceptions import ModelError
from models.fusion import disagreement, get_fusion, majority_vote, soft_vote
from tests.models.conftest import FixedMember

NEG = [0.8, 0.15, 0.05]
POS = [0.05, 0.15, 0.8]
NEU = [0.1, 0.8, 0.1]


def test_soft_vote_is_the_weighted_mean() -> None:
    probs = np.array([[NEG], [POS]])
    assert np.allclose(soft_vote(probs, np.array([1.0, 1.0])), [[0.425, 0.15, 0.425]])
    assert np.allclose(soft_vote(probs, np.array([3.0, 1.0])), [[0.6125, 0.15, 0.2375]])


def test_majority_vote_counts_argmaxes() -> None:
    probs = np.array([[NEG], [NEG], [POS]])
    assert np.allclose(majority_vote(probs, np.ones(3)), [[2 / 3, 0, 1 / 3]])


def test_disagreement_is_zero_for_agreement_and_high_for_opposites() -> None:
    same = np.array([[NEG], [NEG]])
    opposite = np.array([[[1.0, 0, 0]], [[0, 0, 1.0]]])
    assert disagreement(same, np.ones(2))[0] == pytest.approx(0.0, abs=1e-9)
    assert disagreement(opposite, np.ones(2))[0] == pytest.approx(1.0)
    mild = np.array([[NEG], [NEU]])
    assert 0.0 < disagreement(mild, np.ones(2))[0] < 1.0
    assert disagreement(np.array([[NEG]]), np.ones(1))[0] == 0.0


def test_ensemble_judgement_carries_fused_result_and_every_vote() -> None:
    ens = Ensemble([FixedMember("a", NEG), FixedMember("b", NEU, {"good": POS})], [2.0, 1.0])
    bad, good = ens.judge(["plain", "good news"])
    assert bad.label == "negative" and len(bad.votes) == 2
    assert [v.member for v in bad.votes] == ["a", "b"]
    assert bad.score == pytest.approx(bad.probabilities[2] - bad.probabilities[0])
    assert bad.confidence == pytest.approx(max(bad.probabilities))
    assert good.disagreement > bad.disagreement
    assert np.isclose(sum(good.probabilities), 1.0)


def test_ensemble_version_changes_with_members_weights_and_fusion() -> None:
    a, b = FixedMember("a", NEG), FixedMember("b", POS)
    versions = {
        Ensemble([a, b]).version,
        Ensemble([a, b], [1, 2]).version,
        Ensemble([a, b], fusion="majority").version,
        Ensemble([a]).version,
    }
    assert len(versions) == 4
    assert Ensemble([a, b]).version == Ensemble([a, b]).version


def test_ensemble_refuses_bad_configuration() -> None:
    with pytest.raises(ModelError, match="at least one member"):
        Ensemble([])
    with pytest.raises(ModelError, match="non-negative weights"):
        Ensemble([FixedMember("a", NEG)], [1.0, 2.0])
    with pytest.raises(ModelError, match="must not all be zero"):
        Ensemble([FixedMember("a", NEG)], [0.0])
    with pytest.raises(ModelError, match="unknown fusion 'magic'"):
        get_fusion("magic")

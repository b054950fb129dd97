"""Cross-fitting: folds by text hash, out-of-fold answers, and their use in fitting a fusion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.crossfit import (
    Fold,
    OutOfFold,
    apply_out_of_fold,
    cross_fit,
    fold_of,
    make_folds,
    text_key,
)
from models.exceptions import ModelError
from models.training import LabelledSet
from tests.riskwire.test_cli import riskwire


def labelled(prefix: str, n: int) -> LabelledSet:
    return LabelledSet([f"{prefix} sentence {i}" for i in range(n)], np.arange(n) % 3, prefix)


def test_folds_are_stable_balanced_and_blind_to_case_and_spacing() -> None:
    texts = [f"Company {i} reports results" for i in range(3000)]
    folds = [fold_of(t, 3) for t in texts]
    assert folds == [fold_of(t, 3) for t in texts]
    assert all(900 < folds.count(k) < 1100 for k in range(3))
    assert fold_of("Profit  ROSE", 2) == fold_of("profit rose", 2)
    assert text_key("Profit  ROSE") == text_key("profit rose") != text_key("profit fell")


def test_each_copy_trains_on_the_fixed_rows_and_the_other_folds() -> None:
    fixed, folded = labelled("tweet", 10), labelled("news", 40)
    folds = make_folds(fixed, folded, 3)
    held = [t for f in folds for t in f.held.texts]
    assert sorted(held) == sorted(folded.texts)  # every folded row held out exactly once
    for fold in folds:
        assert set(fixed.texts) <= set(fold.train.texts)
        assert not set(fold.held.texts) & set(fold.train.texts)
        assert len(fold.train) == len(fixed) + len(folded) - len(fold.held)
        for text, label in zip(fold.held.texts, fold.held.labels, strict=True):
            assert label == folded.labels[folded.texts.index(text)]
    with pytest.raises(ModelError, match="at least 2"):
        make_folds(fixed, folded, 1)
    with pytest.raises(ModelError, match="empty"):
        make_folds(fixed, labelled("news", 1), 2)


def test_cross_fit_gathers_each_folds_answers_and_what_the_member_saw(tmp_path: Path) -> None:
    fixed, folded = labelled("tweet", 6), labelled("news", 30)
    trained_on: list[set[str]] = []

    def score(fold: Fold) -> np.ndarray:
        trained_on.append(set(fold.train.texts))
        # a copy that "knows" its fold: one-hot of the fold number, so answers can be traced
        return np.tile(np.eye(3)[fold.number], (len(fold.held), 1))

    result = cross_fit("m", fixed, folded, 2, score)
    assert sorted(result.keys) == sorted(text_key(t) for t in folded.texts)
    for key, row in zip(result.keys, result.proba, strict=True):
        text = next(t for t in folded.texts if text_key(t) == key)
        assert np.array_equal(row, np.eye(3)[fold_of(text, 2)])
        assert text not in trained_on[fold_of(text, 2)]
    assert result.seen == {text_key(t) for t in fixed.texts + folded.texts}

    result.save(tmp_path / "m.npz")
    loaded = OutOfFold.load(tmp_path / "m.npz")
    assert loaded.member == "m" and loaded.keys == result.keys and loaded.seen == result.seen
    assert np.array_equal(loaded.proba, result.proba)
    with pytest.raises(ModelError, match="cannot read"):
        OutOfFold.load(tmp_path / "missing.npz")
    with pytest.raises(ModelError, match="got"):
        cross_fit("m", fixed, folded, 2, lambda fold: np.zeros((1, 3)))


def test_out_of_fold_answers_replace_a_members_own_on_the_rows_it_trained_on() -> None:
    texts = ["seen one", "seen two", "never seen"]
    probs = np.full((2, 3, 3), 1 / 3)
    oof = OutOfFold("tuned", [text_key("seen one"), text_key("SEEN   two")],
                    np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]),
                    frozenset({text_key("seen one"), text_key("seen two")}))  # fmt: skip
    replaced = apply_out_of_fold(probs, ["lexicon", "tuned"], texts, {"tuned": oof})
    assert replaced == {"tuned": 2}
    assert np.allclose(probs[1, :2], oof.proba) and np.allclose(probs[1, 2], 1 / 3)
    assert np.allclose(probs[0], 1 / 3)  # a member without a file keeps its own answers

    gap = OutOfFold("tuned", [text_key("seen one")], oof.proba[:1], oof.seen)
    with pytest.raises(ModelError, match="seen two"):
        apply_out_of_fold(np.full((2, 3, 3), 1 / 3), ["lexicon", "tuned"], texts, {"tuned": gap})


@pytest.mark.slow
def test_train_with_folds_then_fuse_with_the_out_of_fold_answers(
    tmp_path: Path, tiny_encoder_dir: Path, fixtures_dir: Path
) -> None:
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    data = str(fixtures_dir / "labelled.jsonl")
    train = LabelledSet.read(fixtures_dir / "labelled.jsonl").split("train")
    common = ["--data", data, "--base", str(tiny_encoder_dir), "--folds", "2"]
    # a head trained and cross-fitted in one command
    head, head_oof = tmp_path / "head.json", tmp_path / "oof" / "tiny-head.npz"
    result = riskwire("models", "train", "--kind", "head", "--name", "tiny-head", "--out",
                      str(head), "--oof", str(head_oof), *common, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert head.is_file() and "fold 2/2" in result.stdout
    # a fine-tuned member cross-fitted on its own (its full copy trained elsewhere)
    tuned_oof = tmp_path / "oof" / "tuned.npz"
    result = riskwire("models", "train", "--kind", "finetune", "--name", "tuned", "--oof",
                      str(tuned_oof), "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                      *common, env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for path in (head_oof, tuned_oof):
        oof = OutOfFold.load(path)
        assert sorted(oof.keys) == sorted(text_key(t) for t in train.texts)
        assert np.allclose(oof.proba.sum(axis=1), 1.0)
    result = riskwire("models", "train", "--kind", "head", "--name", "x", "--folds", "2",
                      "--data", data, env=env)  # fmt: skip
    assert (
        result.returncode != 0 and "--folds and --oof go together" in result.stdout + result.stderr
    )
    result = riskwire("models", "train", "--kind", "finetune", "--name", "x", "--hidden", "8",
                      "--out", str(tmp_path / "x"), "--data", data, env=env)  # fmt: skip
    assert result.returncode != 0 and "--hidden is for --kind head" in result.stdout + result.stderr

    members = tmp_path / "members.json"
    members.write_text(json.dumps({"name": "tiny", "members": [
        {"member": "finlex"},
        {"member": "head", "name": "tiny-head", "head": "head.json",
         "encoder": str(tiny_encoder_dir)},
    ]}))  # fmt: skip
    fitted = tmp_path / "fitted.json"
    result = riskwire("models", "fuse", "--members", str(members), "--data", data, "--split",
                      "train", "--oof", str(tmp_path / "oof"), "--out", str(fitted), env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads(fitted.read_text())
    # the head's answers on its training rows were its copies'; "tuned" is not a member here
    assert spec["fitted_on"]["out_of_fold"] == {"tiny-head": len(train)}
    assert f"tiny-head: out-of-fold answers on {len(train)} of the fitting rows" in result.stdout

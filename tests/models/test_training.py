from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.embedding import DEFAULT_HEAD, EmbeddingHeadMember, Head, SentenceEncoder
from models.exceptions import ModelError
from models.training import (
    DEFAULT_TRAIN_SET,
    LabelledSet,
    evaluate,
    fit_mlp,
    fit_softmax,
    macro_f1_difference,
    train_head,
)


def separable(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = np.arange(n) % 3
    x = rng.normal(scale=0.3, size=(n, 4))
    x[np.arange(n), y] += 2.0
    return x, y


def test_fit_softmax_learns_a_separable_problem_deterministically() -> None:
    x, y = separable()
    a, b = fit_softmax(x, y), fit_softmax(x, y)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert (np.argmax(x @ a.weight + a.bias, axis=1) == y).mean() == 1.0


def test_fit_mlp_learns_a_nonlinear_problem_deterministically() -> None:
    """XOR-like classes no linear head can separate; the same seed gives the same weights."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(400, 2))
    y = np.where(x[:, 0] * x[:, 1] > 0, 0, 2)
    y[np.abs(x[:, 0]) < 0.15] = 1
    a, b = fit_mlp(x, y, hidden=32, l2=0.0), fit_mlp(x, y, hidden=32, l2=0.0)
    assert a.hidden is not None and b.hidden is not None and a.digest() == b.digest()
    assert a.digest() != fit_mlp(x, y, hidden=32, l2=0.0, seed=1).digest()
    assert (np.argmax(a.logits(x), axis=1) == y).mean() > 0.9
    linear = fit_softmax(x, y)
    assert (np.argmax(linear.logits(x), axis=1) == y).mean() < 0.75
    with pytest.raises(ModelError, match="at least 2 rows"):
        fit_mlp(x[:1], y[:1], hidden=4)


def test_evaluate_reports_accuracy_and_macro_f1() -> None:
    probs = np.eye(3)[[0, 1, 2, 2]]
    scores = evaluate(probs, [0, 1, 2, 1])
    assert scores["accuracy"] == 0.75 and scores["n"] == 4
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_weighted_f1_and_calibration_error_on_known_cases() -> None:
    from models.training import confusion, expected_calibration_error, reliability

    probs = np.eye(3)[[0, 1, 2, 2]]
    scores = evaluate(probs, [0, 1, 2, 1])
    # class F1s 1, 2/3, 2/3 with supports 1, 2, 1
    assert scores["weighted_f1"] == pytest.approx((1 + 2 * 2 / 3 + 2 / 3) / 4)
    # fully confident and 75% right: the gap is 0.25
    assert scores["ece"] == pytest.approx(0.25)
    assert confusion(probs, np.array([0, 1, 2, 1])).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    honest = np.array([[0.7, 0.2, 0.1]] * 10)
    labels = np.array([0] * 7 + [1] * 3)  # 70% confident, 70% right: calibrated
    assert expected_calibration_error(honest, labels) == pytest.approx(0.0, abs=1e-9)
    assert reliability(honest, labels) == [(pytest.approx(0.7), pytest.approx(0.7), 10)]


def test_splits_are_stable_disjoint_and_cover_the_set(fixtures_dir: Path) -> None:
    data = LabelledSet.read(fixtures_dir / "labelled.jsonl")
    parts = {name: data.split(name) for name in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(data)
    texts = [set(p.texts) for p in parts.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert data.split("train").texts == parts["train"].texts
    with pytest.raises(ModelError, match="unknown split"):
        data.split("holdout")


def test_labelled_csv_is_read_like_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"Profit rose, again",positive\nFlat quarter,neutral\n')
    data = LabelledSet.read(path)
    assert data.texts == ["Profit rose, again", "Flat quarter"] and data.labels.tolist() == [2, 1]
    path.write_text("sentence,sentiment\nx,positive\n")
    with pytest.raises(ModelError, match="'text' and 'label' columns"):
        LabelledSet.read(path)


def test_labelled_set_refuses_unknown_labels_and_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x", "label": "bullish"}) + "\n")
    with pytest.raises(ModelError, match=r"d\.jsonl:1"):
        LabelledSet.read(path)
    path.write_text(json.dumps({"text": "ok", "label": "neutral"}) + "\n{broken\n")
    with pytest.raises(ModelError, match=r"d\.jsonl:2: not valid JSON"):
        LabelledSet.read(path)


def test_labelled_set_keeps_unicode_line_separators_inside_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"text": "up\u2028and away", "label": "positive"}, ensure_ascii=False)
    )
    assert LabelledSet.read(path).texts == ["up\u2028and away"]


def test_train_head_on_a_tiny_encoder_records_its_provenance(
    tiny_encoder_dir: Path, fixtures_dir: Path
) -> None:
    data = LabelledSet.read(fixtures_dir / "labelled.jsonl")
    head = train_head(SentenceEncoder(str(tiny_encoder_dir)), data, folds=3)
    assert head.weight.shape == (16, 3)
    assert head.meta["train_sha256"] == data.sha256 and head.meta["train_rows"] == len(data.texts)
    assert head.version.startswith("minilm-head-") and 0 <= head.meta["cv_accuracy"] <= 1
    mlp = train_head(SentenceEncoder(str(tiny_encoder_dir)), data, folds=3, hidden=6)
    assert mlp.hidden is not None and mlp.hidden[0].shape == (16, 6) and mlp.weight.shape == (6, 3)
    assert mlp.meta["hidden"] == 6 and mlp.meta["l2"] == 1e-3 and "hidden" not in head.meta


@pytest.mark.slow
def test_shipped_head_matches_its_training_set_and_scores_held_out_text(fixtures_dir: Path) -> None:
    """Real MiniLM weights: the shipped head is the one the shipped data trains, and it is good."""
    head = Head.load(DEFAULT_HEAD)
    data = LabelledSet.read(DEFAULT_TRAIN_SET)
    assert head.meta["train_sha256"] == data.sha256, "retrain: riskwire models train"
    encoder = SentenceEncoder()
    retrained = train_head(encoder, data, l2=head.meta["l2"])
    # same data and seed: the same model, bit for bit in one environment (the version hashes the
    # weights) and to float noise across library versions (the encoder's sums may be ordered
    # differently by another torch or BLAS build)
    assert train_head(encoder, data, l2=head.meta["l2"]).version == retrained.version
    assert np.allclose(retrained.weight, head.weight, atol=2e-3)
    assert np.allclose(retrained.bias, head.bias, atol=2e-3)
    held_out = LabelledSet.read(fixtures_dir / "labelled.jsonl")
    member = EmbeddingHeadMember(encoder, head)
    scores = evaluate(member.predict_proba(held_out.texts), held_out.labels)
    assert scores["accuracy"] >= 0.75, scores


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(3)[classes]


def test_the_paired_bootstrap_of_a_macro_f1_difference() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=600)
    noisy = np.where(rng.random(600) < 0.3, (labels + 1) % 3, labels)  # wrong on about 30%
    same = macro_f1_difference(labels, noisy, one_hot(noisy))  # classes or probabilities alike
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}

    better = macro_f1_difference(labels, labels, noisy)
    whole = (
        evaluate(one_hot(labels), labels)["macro_f1"] - evaluate(one_hot(noisy), labels)["macro_f1"]
    )
    assert better["difference"] == pytest.approx(whole)
    assert 0.0 < better["low"] < better["difference"] < better["high"]  # clearly better
    assert better == macro_f1_difference(labels, labels, noisy)  # the same draws for a seed

    # two predictors as good as each other, wrong on different rows: the interval holds 0
    other = np.where(rng.random(600) < 0.3, (labels + 2) % 3, labels)
    tie = macro_f1_difference(labels, noisy, other)
    assert tie["low"] < 0.0 < tie["high"] and tie["high"] - tie["low"] < 0.15


def test_the_bootstrap_of_a_large_set_draws_its_resamples_in_blocks() -> None:
    """5,000 rows: 800 resamples a block, 1,000 in all; still one interval, the same each time."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=5000)
    a = np.where(rng.random(5000) < 0.2, (labels + 1) % 3, labels)
    b = np.where(rng.random(5000) < 0.25, (labels + 2) % 3, labels)
    figures = macro_f1_difference(labels, a, b, resamples=1000)
    assert figures["low"] < figures["difference"] < figures["high"]
    assert figures["high"] - figures["low"] < 0.05
    assert figures == macro_f1_difference(labels, a, b, resamples=1000)

"""Fine-tuning a transformer member: determinism, early stopping, a loadable versioned artefact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.exceptions import ModelError
from models.finetune import (
    GROUP_BATCHES,
    FinetuneConfig,
    batches,
    finetune,
    training_precision,
)
from models.hf import HFClassifierMember
from models.pooled import CLASSIFIER_FILE, MeanPooledClassifier
from models.training import LabelledSet, evaluate


def weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight of a fine-tuned folder; a mean-pooled one keeps its classifier apart."""
    from safetensors.numpy import load_file

    found = load_file(str(path / "model.safetensors"))
    if (path / CLASSIFIER_FILE).is_file():
        found |= {f"classifier.{k}": v for k, v in load_file(str(path / CLASSIFIER_FILE)).items()}
    return found


@pytest.fixture(scope="module")
def data(fixtures_dir: Path) -> LabelledSet:
    return LabelledSet.read(fixtures_dir / "labelled.jsonl")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_same_seed_and_data_give_the_same_model(
    tmp_path: Path, tiny_encoder_dir: Path, data: LabelledSet, pooling: str
) -> None:
    config = FinetuneConfig(
        epochs=2,
        batch_size=8,
        max_length=32,
        learning_rate=1e-3,
        seed=7,
        patience=10,
        pooling=pooling,
    )
    steps: list[int] = []
    a = finetune(str(tiny_encoder_dir), data, data, tmp_path / "a", config,
                 lambda step, total, figures: steps.append(step))  # fmt: skip
    b = finetune(str(tiny_encoder_dir), data, data, tmp_path / "b", config)
    wa, wb = weights(a.path), weights(b.path)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert steps == list(range(1, a.steps + 1)) and a.steps == 8  # 30 rows / 8, two epochs
    c = finetune(str(tiny_encoder_dir), data, data, tmp_path / "c",
                 FinetuneConfig(**{**vars(config), "seed": 8}))  # fmt: skip
    assert not np.array_equal(weights(c.path)["classifier.weight"], wa["classifier.weight"])
    member = HFClassifierMember(str(a.path), name="tuned")
    assert member.order == [0, 1, 2] and member.version.startswith("tuned-")
    assert isinstance(member.model, MeanPooledClassifier) == (pooling == "mean")
    meta = json.loads((a.path / "riskwire.json").read_text())
    assert meta["base"] == str(tiny_encoder_dir) and meta["data_sha256"] == data.sha256
    assert meta["metrics"]["val_macro_f1"] == round(a.best_val["macro_f1"], 4)
    # the member answers as the model did on the validation rows when it was kept
    again = evaluate(member.predict_proba(data.texts), data.labels)["macro_f1"]
    assert abs(again - meta["metrics"]["val_macro_f1"]) < 1e-3
    assert member.describe()["data_sha256"] == data.sha256


def test_training_stops_when_validation_stops_improving(
    tmp_path: Path, tiny_encoder_dir: Path, data: LabelledSet
) -> None:
    # a zero learning rate never improves on the first evaluation: stop after `patience` more
    config = FinetuneConfig(epochs=20, batch_size=8, max_length=32, learning_rate=0.0,
                            patience=2, evaluations_per_epoch=1)  # fmt: skip
    result = finetune(str(tiny_encoder_dir), data, data, tmp_path / "flat", config)
    assert result.stopped_early and len(result.history) == 3
    assert result.steps == 3 * 4  # three epochs of four batches, of twenty allowed


def test_empty_data_and_missing_bases_are_clear_errors(tmp_path: Path, data: LabelledSet) -> None:
    empty = LabelledSet([], np.zeros(0, dtype=np.int64), "0")
    with pytest.raises(ModelError, match="non-empty"):
        finetune("unused", empty, data, tmp_path / "x")
    with pytest.raises(ModelError, match="cannot load base model"):
        finetune(str(tmp_path / "nowhere"), data, data, tmp_path / "x")
    with pytest.raises(ModelError, match="pooling 'max': choose one of"):
        finetune("unused", data, data, tmp_path / "x", FinetuneConfig(pooling="max"))


@pytest.mark.parametrize("group", [True, False])
def test_an_epoch_holds_every_row_once_in_batches_drawn_from_the_seed(group: bool) -> None:
    lengths = np.random.default_rng(1).integers(3, 97, size=1000)
    epoch = batches(lengths, 32, np.random.default_rng(5), group)
    rows = np.concatenate(epoch)
    assert sorted(rows.tolist()) == list(range(1000))
    assert len(epoch) == -(-1000 // 32) and sum(len(b) < 32 for b in epoch) == 1
    again = batches(lengths, 32, np.random.default_rng(5), group)
    assert all(np.array_equal(a, b) for a, b in zip(epoch, again, strict=True))
    other = batches(lengths, 32, np.random.default_rng(6), group)
    assert not all(np.array_equal(a, b) for a, b in zip(epoch, other, strict=True))


def test_grouped_batches_pad_less_and_are_not_in_length_order() -> None:
    lengths = np.random.default_rng(2).integers(3, 97, size=32 * GROUP_BATCHES * 3)
    grouped = batches(lengths, 32, np.random.default_rng(0), group=True)
    plain = batches(lengths, 32, np.random.default_rng(0), group=False)

    def padded(epoch: list[np.ndarray]) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in epoch)

    assert padded(grouped) < 0.6 * padded(plain)
    # each batch holds rows of one stretch of a sorted chunk: its spread is small
    assert max(int(np.ptp(lengths[b])) for b in grouped) <= 20
    # and the batches themselves are shuffled, not served shortest first
    longest = [int(lengths[b].max()) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_training_precision_is_fp32_or_bf16() -> None:
    assert training_precision("fp32") == "fp32" and training_precision("bf16") == "bf16"
    assert training_precision("auto") in ("fp32", "bf16")
    with pytest.raises(ModelError, match="training precision 'int8'"):
        training_precision("int8")


def test_bf16_fine_tuning_is_deterministic_and_says_its_arithmetic(
    tmp_path: Path, tiny_encoder_dir: Path, data: LabelledSet
) -> None:
    config = FinetuneConfig(epochs=1, batch_size=8, max_length=32, learning_rate=1e-3,
                            precision="bf16", patience=10)  # fmt: skip
    a = finetune(str(tiny_encoder_dir), data, data, tmp_path / "a", config)
    b = finetune(str(tiny_encoder_dir), data, data, tmp_path / "b", config)
    wa, wb = weights(a.path), weights(b.path)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert all(w.dtype == np.float32 for w in wa.values())  # autocast: weights stay fp32
    meta = json.loads((a.path / "riskwire.json").read_text())
    assert meta["config"]["precision"] == "bf16" and meta["config"]["group_by_length"] is True

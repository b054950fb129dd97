"""Fine-tuning a transformer member: determinism, early stopping, a loadable versioned artefact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.exceptions import ModelError
from models.finetune import FinetuneConfig, finetune
from models.hf import HFClassifierMember
from models.training import LabelledSet


def weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def data(fixtures_dir: Path) -> LabelledSet:
    return LabelledSet.read(fixtures_dir / "labelled.jsonl")


def test_same_seed_and_data_give_the_same_model(
    tmp_path: Path, tiny_encoder_dir: Path, data: LabelledSet
) -> None:
    config = FinetuneConfig(
        epochs=2, batch_size=8, max_length=32, learning_rate=1e-3, seed=7, patience=10
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
    meta = json.loads((a.path / "riskwire.json").read_text())
    assert meta["base"] == str(tiny_encoder_dir) and meta["data_sha256"] == data.sha256
    assert meta["metrics"]["val_macro_f1"] == round(a.best_val["macro_f1"], 4)
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

"""The Hugging Face classifier member: label mapping, refusal, chunking of long texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.base import softmax
from models.exceptions import ModelError
from models.hf import HFClassifierMember, canonical_order
from tests.models.conftest import save_tiny_classifier


def raw_probs(member: HFClassifierMember, text: str) -> np.ndarray:
    """The model's own softmax, in its own label order, on one un-chunked text."""
    import torch

    batch = member.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        return softmax(member.model(**batch).logits.double().numpy())[0]


def test_finbert_label_order_is_mapped_onto_the_canonical_one(tiny_classifier_dir: Path) -> None:
    member = HFClassifierMember(str(tiny_classifier_dir))
    text = "Profit warning sends the shares lower"
    raw = raw_probs(member, text)  # positive, negative, neutral
    assert np.allclose(member.predict_proba([text])[0], [raw[1], raw[2], raw[0]], atol=1e-6)
    assert member.describe()["labels"] == ["negative", "neutral", "positive"]
    assert "pooling" not in member.describe()  # a pooler classifier says nothing of pooling


def test_label_synonyms_and_explicit_names() -> None:
    assert canonical_order({0: "Bearish", 1: "Neutral", 2: "Bullish"}) == [0, 1, 2]
    assert canonical_order({0: "POS", 1: "NEG", 2: "NEU"}) == [1, 2, 0]
    names = {"LABEL_0": "neutral", "LABEL_1": "positive", "LABEL_2": "negative"}
    assert canonical_order({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, names) == [2, 0, 1]


def test_a_model_whose_labels_cannot_be_mapped_is_refused(tmp_path: Path) -> None:
    opaque = save_tiny_classifier(tmp_path / "opaque", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ModelError, match=r"cannot map the model's label 'LABEL_0'.*label_names"):
        HFClassifierMember(str(opaque))
    names = {"LABEL_0": "negative", "LABEL_1": "neutral", "LABEL_2": "positive"}
    assert HFClassifierMember(str(opaque), label_names=names).order == [0, 1, 2]
    binary = save_tiny_classifier(tmp_path / "binary", {0: "negative", 1: "positive"})
    with pytest.raises(ModelError, match="do not cover"):
        HFClassifierMember(str(binary))
    doubled = save_tiny_classifier(tmp_path / "doubled", {0: "neg", 1: "negative", 2: "pos"})
    with pytest.raises(ModelError, match="two of the model's labels map onto 'negative'"):
        HFClassifierMember(str(doubled))
    with pytest.raises(ModelError, match="cannot load classifier"):
        HFClassifierMember(str(tmp_path / "nowhere"))


def test_long_texts_are_scored_in_windows_and_combined_by_token_count(
    tiny_classifier_dir: Path,
) -> None:
    member = HFClassifierMember(str(tiny_classifier_dir), max_length=16, stride=4)
    short = "Quarterly revenue rose"
    long = " ".join(f"word{i} revenue fell sharply at the plant" for i in range(12))
    # a short text is one window: exactly the model's own answer
    raw = raw_probs(member, short)
    assert np.allclose(member.predict_proba([short])[0], raw[[1, 2, 0]], atol=1e-6)
    batch = member.preprocess([long])
    windows = int(batch["encoding"]["input_ids"].shape[0])
    assert windows > 3 and set(batch["owner"].tolist()) == {0}
    assert batch["encoding"]["input_ids"].shape[1] <= 16
    # the combination is the token-weighted mean of the windows' probabilities
    import torch

    with torch.inference_mode():
        logits = member.model(**batch["encoding"]).logits.double().numpy()
    per_window = softmax(logits)[:, member.order]
    expected = (per_window * batch["tokens"][:, None]).sum(0) / batch["tokens"].sum()
    assert np.allclose(member.predict_proba([long])[0], expected, atol=1e-6)
    # and it does not depend on the company it keeps in a batch
    assert np.allclose(member.predict_proba([short, long])[1], expected, atol=1e-6)


def test_settings_that_cannot_work_are_refused(tiny_classifier_dir: Path) -> None:
    with pytest.raises(ModelError, match="stride"):
        HFClassifierMember(str(tiny_classifier_dir), max_length=16, stride=8)
    with pytest.raises(ModelError, match=r"fp16 \(half precision\) is for GPU"):
        HFClassifierMember(str(tiny_classifier_dir), precision="fp16")
    with pytest.raises(ModelError, match="precision 'fp8'"):
        HFClassifierMember(str(tiny_classifier_dir), precision="fp8")


def test_version_follows_the_weights_and_the_variant(tmp_path: Path, tiny_classifier_dir: Path):
    same = HFClassifierMember(str(tiny_classifier_dir))
    assert same.version == HFClassifierMember(str(tiny_classifier_dir)).version
    other = save_tiny_classifier(
        tmp_path / "tiny-classifier", {0: "positive", 1: "negative", 2: "neutral"}, seed=1
    )
    assert HFClassifierMember(str(other), name=same.name).version != same.version
    assert HFClassifierMember(str(tiny_classifier_dir), quantize=True).version.endswith("q8-L256")


def test_weights_stored_in_half_precision_run_in_the_precision_asked_for(
    tmp_path: Path, tiny_classifier_dir: Path, tiny_encoder_dir: Path
) -> None:
    """transformers loads a checkpoint in the dtype it was saved in: an fp16 one must still run
    in fp32 on the CPU (or int8, which quantizes fp32 layers), giving the fp32 model's answers
    to fp16 rounding."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from models.embedding import SentenceEncoder

    for source, loader in ((tiny_classifier_dir, AutoModelForSequenceClassification),
                           (tiny_encoder_dir, AutoModel)):  # fmt: skip
        half = tmp_path / f"{source.name}-fp16"
        loader.from_pretrained(source).half().save_pretrained(half)
        AutoTokenizer.from_pretrained(source).save_pretrained(half)
        assert loader.from_pretrained(half).dtype == torch.float16  # what the fix is for
    texts = ["Profit rose 20% on strong demand.", "The lender cut its outlook after losses."]
    classifier = HFClassifierMember(str(tmp_path / f"{tiny_classifier_dir.name}-fp16"),
                                    max_length=16, precision="fp32")  # fmt: skip
    assert classifier.model.dtype == torch.float32
    full = HFClassifierMember(str(tiny_classifier_dir), max_length=16, precision="fp32")
    assert np.allclose(classifier.predict_proba(texts), full.predict_proba(texts), atol=5e-3)
    quantized = HFClassifierMember(str(tmp_path / f"{tiny_classifier_dir.name}-fp16"),
                                   max_length=16, precision="int8")  # fmt: skip
    assert quantized.quantized
    assert np.allclose(quantized.predict_proba(texts), full.predict_proba(texts), atol=0.02)
    encoder = SentenceEncoder(str(tmp_path / f"{tiny_encoder_dir.name}-fp16"), precision="fp32")
    assert encoder.model.dtype == torch.float32
    reference = SentenceEncoder(str(tiny_encoder_dir), precision="fp32").encode(texts)
    assert (encoder.encode(texts) * reference).sum(axis=1).min() > 0.999


def test_a_mean_pooled_classifier_reads_the_sentence_vector_its_encoder_gives(
    tiny_pooled_classifier_dir: Path,
) -> None:
    """softmax(scale * (W v + b)) of exactly the normalised mean token vector that
    ``SentenceEncoder`` computes from the same encoder; long texts in windows, as any member."""
    from models.embedding import SentenceEncoder
    from models.pooled import MeanPooledClassifier

    member = HFClassifierMember(str(tiny_pooled_classifier_dir), max_length=64, stride=8)
    assert isinstance(member.model, MeanPooledClassifier) and member.order == [0, 1, 2]
    assert member.describe()["pooling"] == "mean"
    texts = ["Profit rose 20% on strong demand.", "The lender cut its outlook", "Shares"]
    vectors = SentenceEncoder(str(tiny_pooled_classifier_dir), max_length=64).encode(texts)
    layer = member.model.classifier
    weight, bias = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    expected = softmax(member.model.scale * (vectors.astype(np.float64) @ weight.T + bias))
    assert np.allclose(member.predict_proba(texts), expected, atol=1e-5)
    assert len(member.preprocess([" ".join(texts * 20)])["owner"]) > 1  # windows


def test_a_pooled_folder_that_does_not_say_how_to_pool_is_refused(
    tmp_path: Path, tiny_pooled_classifier_dir: Path
) -> None:
    import shutil

    from models.pooled import CLASSIFIER_FILE, POOLING_FILE, new_classifier

    broken = tmp_path / "broken"
    shutil.copytree(tiny_pooled_classifier_dir, broken)
    (broken / POOLING_FILE).write_text('{"pooling": "max", "scale": 20}')
    with pytest.raises(ModelError, match="pooling 'max' is unknown"):
        HFClassifierMember(str(broken))
    (broken / POOLING_FILE).write_text('{"pooling": "mean", "scale": 20}')
    (broken / CLASSIFIER_FILE).unlink()
    with pytest.raises(ModelError, match="cannot load mean-pooled classifier"):
        HFClassifierMember(str(broken))
    with pytest.raises(ModelError, match="pooling 'max': choose one of"):
        new_classifier(str(tiny_pooled_classifier_dir), "max")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_traced_classifier_answers_as_the_model_does(
    tiny_classifier_dir: Path, tiny_pooled_classifier_dir: Path, precision: str, pooling: str
) -> None:
    """The trace (``models.tracing``) over batches of other sizes and lengths than it was traced
    on, windows of a long text included; in bf16 within the arithmetic's own spread."""
    folder = tiny_pooled_classifier_dir if pooling == "mean" else tiny_classifier_dir
    options = {"max_length": 16, "stride": 4, "batch_size": 3, "precision": precision}
    plain = HFClassifierMember(str(folder), **options)
    traced = HFClassifierMember(str(folder), trace=True, **options)
    assert plain.traced is None and traced.traced is not None
    texts = ["Profit rose 20% on strong demand.", "x", "The lender cut its outlook after losses",
             " ".join(["shares fell"] * 40), "Revenue was flat", "Guidance raised"]  # fmt: skip
    tolerance = 1e-6 if precision == "fp32" else 2e-2
    assert np.allclose(traced.predict_proba(texts), plain.predict_proba(texts), atol=tolerance)
    one_by_one = np.vstack([traced.predict_proba([t]) for t in texts])
    assert np.allclose(one_by_one, plain.predict_proba(texts), atol=tolerance)
    assert traced.version == plain.version  # the same answers: the same model version


def test_a_classifier_whose_trace_answers_differently_runs_untraced(
    tiny_classifier_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    def wrong(module: torch.nn.Module) -> object:
        return lambda *inputs: module(*inputs) + 1.0

    monkeypatch.setattr(torch.jit, "freeze", wrong)
    texts = ["Profit rose 20% on strong demand.", "The lender cut its outlook"]
    member = HFClassifierMember(str(tiny_classifier_dir), trace=True, precision="bf16")
    assert member.traced is None
    assert "runs untraced: its trace answers differently" in caplog.text
    plain = HFClassifierMember(str(tiny_classifier_dir), precision="bf16")
    assert np.allclose(member.predict_proba(texts), plain.predict_proba(texts), atol=1e-6)

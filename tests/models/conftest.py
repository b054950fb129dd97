from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models.base import Member


class FixedMember(Member):
    """A tiny test member: the same probabilities for every text (or per keyword)."""

    def __init__(
        self,
        name: str,
        probabilities: Sequence[float],
        keywords: dict[str, Sequence[float]] | None = None,
        batch_size: int = 2,
    ) -> None:
        self.name = name
        self.version = f"{name}-1"
        self.probabilities = np.asarray(probabilities, float)
        self.keywords = {k: np.asarray(v, float) for k, v in (keywords or {}).items()}
        self.batch_size = batch_size

    def _forward(self, batch: list[str]) -> np.ndarray:
        rows = []
        for text in batch:
            hit = next((p for k, p in self.keywords.items() if k in text), self.probabilities)
            rows.append(np.log(hit))
        return np.asarray(rows)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT with the MiniLM tokenizer, saved as a local model dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.embedding import default_encoder_path

    path = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def save_tiny_classifier(path: Path, id2label: dict[int, str], seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT classifier with the MiniLM tokenizer, as a model dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from models.embedding import default_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
        num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labels in FinBERT's order (positive, negative, neutral), so the mapping is exercised."""
    return save_tiny_classifier(
        tmp_path_factory.mktemp("tiny-classifier"), {0: "positive", 1: "negative", 2: "neutral"}
    )


@pytest.fixture(scope="session")
def tiny_pooled_classifier_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path
) -> Path:
    """A mean-pooled classifier (``models.pooled``) over the tiny encoder, with a random layer."""
    import torch

    from models.pooled import MeanPooledClassifier
    from riskwire.records import LABELS

    torch.manual_seed(3)
    model = MeanPooledClassifier.from_base(
        str(tiny_encoder_dir), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-pooled")
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    return Path(path)

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

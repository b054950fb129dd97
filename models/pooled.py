"""A sequence classifier that reads the mean of its encoder's token vectors, as MiniLM learnt them.

``AutoModelForSequenceClassification`` classifies from BERT's pooler: the first token's vector
through a dense layer. The packaged ``all-MiniLM-L6-v2`` was trained (by sentence-transformers)
to give its meaning as the *mean* of its token vectors; its first token and pooler were never
trained for that, so fine-tuning from them starts from an untrained summary of the sentence.
``MeanPooledClassifier`` pools as the base was trained to: mean over the real tokens, L2
normalised, then a linear layer whose logits are scaled by a fixed ``scale`` (a unit vector's
logits would be too small to be confident; 20, as in cosine-similarity training).

Saved as a model folder that reads as any other: the encoder's own files (``config.json`` holds
the canonical labels, so ``models.hf`` maps them as it maps any classifier's), the tokenizer,
``classifier.safetensors`` (the linear layer) and ``pooling.json`` (how to pool). ``load_classifier``
gives this class for such a folder and ``AutoModelForSequenceClassification`` for every other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from models.base import mean_pool
from models.exceptions import ModelError
from models.finetune import POOLINGS

POOLING_FILE = "pooling.json"
CLASSIFIER_FILE = "classifier.safetensors"


class MeanPooledClassifier(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self, encoder: Any, labels: int = 3, scale: float = 20.0, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(int(encoder.config.hidden_size), labels)
        self.scale = float(scale)

    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def dtype(self) -> Any:
        return self.encoder.dtype

    @classmethod
    def from_base(cls, base: str, **config: Any) -> MeanPooledClassifier:
        """A new classifier over ``base``'s encoder; ``config`` (``id2label``, ``label2id``) is
        written into the encoder's configuration, as ``from_pretrained`` writes it."""
        encoder = AutoModel.from_pretrained(base, **config)
        return cls(encoder, labels=len(encoder.config.id2label))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MeanPooledClassifier:
        from safetensors.torch import load_file

        folder = Path(path)
        try:
            spec = json.loads((folder / POOLING_FILE).read_text(encoding="utf-8"))
            encoder = AutoModel.from_pretrained(folder)
            state = load_file(str(folder / CLASSIFIER_FILE))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot load mean-pooled classifier {path!r}: {exc}") from exc
        if spec.get("pooling") != "mean":
            raise ModelError(f"{folder / POOLING_FILE}: pooling {spec.get('pooling')!r} is unknown")
        model = cls(encoder, labels=int(state["weight"].shape[0]), scale=float(spec["scale"]))
        model.classifier.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(path)
        self.encoder.save_pretrained(folder)
        state = {
            k: v.detach().float().contiguous() for k, v in self.classifier.state_dict().items()
        }
        save_file(state, str(folder / CLASSIFIER_FILE))
        spec = {"pooling": "mean", "normalize": True, "scale": self.scale}
        (folder / POOLING_FILE).write_text(json.dumps(spec) + "\n", encoding="utf-8")

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        token_type_ids: Any = None,
        labels: Any = None,
    ) -> SequenceClassifierOutput:
        tokens = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        pooled = mean_pool(tokens, attention_mask).to(tokens.dtype)
        logits = self.scale * self.classifier(self.dropout(pooled))
        loss: Any = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def is_mean_pooled(path: str | Path) -> bool:
    return (Path(path) / POOLING_FILE).is_file()


def load_classifier(path: str) -> Any:
    """The classifier in a local folder or under a hub id: mean-pooled where the folder says so."""
    if is_mean_pooled(path):
        return MeanPooledClassifier.from_pretrained(path)
    return AutoModelForSequenceClassification.from_pretrained(path)


def new_classifier(base: str, pooling: str, **config: Any) -> Any:
    """A classifier to fine-tune from ``base``: over its mean token vector or its pooler."""
    if pooling == "mean":
        return MeanPooledClassifier.from_base(base, **config)
    if pooling == "cls":
        return AutoModelForSequenceClassification.from_pretrained(base, **config)
    raise ModelError(f"pooling {pooling!r}: choose one of {POOLINGS}")

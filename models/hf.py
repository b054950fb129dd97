"""A Hugging Face sequence classifier as a member: any hub id or local path, its labels mapped.

Models order their labels differently (ProsusAI/finbert says ``positive, negative, neutral``;
others ``LABEL_0..2`` with a model card saying which is which), so the model's ``id2label`` is mapped
onto the canonical ``negative, neutral, positive``; a model whose labels cannot be mapped is refused
unless the caller names the mapping. Texts longer than ``max_length`` tokens are cut into
overlapping windows, each window is scored, and the text's probabilities are the windows' mean,
weighted by their token counts. A folder that ``riskwire models train --pooling mean`` wrote (the
default) holds a classifier over the mean token vector (``models.pooled``) and loads the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import TorchMember, autocast, resolve_precision, softmax
from models.exceptions import ModelError
from models.tokens import BatchTokenizer
from models.tracing import trace_forward, traceable
from riskwire.records import LABELS

log = logging.getLogger(__name__)

SYNONYMS = {
    "negative": "negative", "neg": "negative", "bearish": "negative",
    "neutral": "neutral", "neu": "neutral", "none": "neutral",
    "positive": "positive", "pos": "positive", "bullish": "positive",
}  # fmt: skip


def canonical_order(
    id2label: Mapping[int, str], names: Mapping[str, str] | None = None
) -> list[int]:
    """Model output index for each canonical label, in ``LABELS`` order.

    ``names`` maps the model's own label names (``LABEL_0``) onto canonical ones, when its
    ``id2label`` does not say them.
    """
    mapping = {**SYNONYMS, **{k.lower(): v for k, v in (names or {}).items()}}
    found: dict[str, int] = {}
    for index, raw in id2label.items():
        label = mapping.get(str(raw).strip().lower())
        if label not in LABELS:
            raise ModelError(
                f"cannot map the model's label {raw!r} onto {LABELS}; its labels are "
                f"{dict(id2label)}: pass label_names, e.g. {{'LABEL_0': 'negative', ...}}"
            )
        if label in found:
            raise ModelError(f"two of the model's labels map onto {label!r}: {dict(id2label)}")
        found[label] = int(index)
    missing = [label for label in LABELS if label not in found]
    if missing or len(id2label) != len(LABELS):
        raise ModelError(f"the model's labels {dict(id2label)} do not cover {LABELS} exactly")
    return [found[label] for label in LABELS]


def version_files(path: Path) -> list[Path]:
    """A local model directory's weights and configs, by name: what its version is a digest of."""
    return sorted(
        (p for p in path.iterdir()
         if p.is_file() and p.name.endswith((".safetensors", ".bin", ".json"))
         and not p.name.startswith("tokenizer")),
        key=lambda p: p.name,
    )  # fmt: skip


def content_digest(path: Path) -> str:
    """A short digest of a local model directory's weights and config (what makes its version)."""
    digest = hashlib.sha256()
    for file in version_files(path):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:10]


class HFClassifierMember(TorchMember):
    """``AutoModelForSequenceClassification`` with chunking, micro-batches and device placement."""

    def __init__(
        self,
        model: str,
        name: str | None = None,
        device: str = "cpu",
        max_length: int = 256,
        stride: int | None = None,
        batch_size: int = 32,
        precision: str = "fp32",
        quantize: bool = False,
        label_names: Mapping[str, str] | None = None,
        trace: bool = False,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        from models.pooled import load_classifier

        stride = max(1, max_length // 8) if stride is None else stride
        if max_length < 16 or stride >= max_length // 2:
            raise ModelError(
                f"max_length {max_length} / stride {stride}: need 16 <= 2*stride < max"
            )
        self.path = model
        self.device = device
        self.max_length = max_length
        self.stride = stride
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            # weights stored in half precision load as such: fp32 first, then ``precision``
            net = load_classifier(model).float()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load classifier {model!r}: {exc}") from exc
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelError(f"{model!r} has no fast tokenizer; chunking needs one")
        self.batch_tokenizer = BatchTokenizer(self.tokenizer, max_length, self.stride)
        self.batch_tokenizer.check_windows()
        self.order = canonical_order(net.config.id2label, label_names)
        # fp32, bf16 (CPU autocast), int8 (CPU dynamic quantisation; quantize=True) or fp16 (GPU)
        self.precision = resolve_precision("int8" if quantize else precision, device)
        self.quantized = self.precision == "int8"
        self.half = self.precision == "fp16"
        if self.quantized:
            net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
        net = net.to(device).eval()
        if self.half:
            net = net.half()
        self.model = net
        # on the CPU in fp32 or bf16, the forward pass as a TorchScript trace (``models.tracing``)
        self.traced = None
        if trace and traceable(device, self.precision):
            self.traced = trace_forward(
                net, lambda out: out.logits, lambda texts: self.preprocess(texts)["encoding"],
                self.precision, f"classifier {model}",
            )  # fmt: skip
        local = Path(model)
        origin = (
            content_digest(local)
            if local.is_dir()
            else str(getattr(net.config, "_commit_hash", None) or "hub")[:10]
        )
        self.name = name or (local.name if local.is_dir() else model.split("/")[-1])
        variant = "q8" if self.quantized else self.precision
        self.version = f"{self.name}-{origin}-{variant}-L{max_length}"
        meta = local / "riskwire.json"
        self.meta = json.loads(meta.read_text()) if meta.is_file() else {}

    def describe(self) -> dict[str, Any]:
        from models.pooled import MeanPooledClassifier

        return {
            "kind": "hf-classifier",
            "model": self.path,
            "labels": [self.model.config.id2label[i] for i in self.order],
            "max_length": self.max_length,
            "device": self.device,
            "precision": self.precision,
            **({"pooling": "mean"} if isinstance(self.model, MeanPooledClassifier) else {}),
            **{k: v for k, v in self.meta.items() if k in ("base", "data_sha256", "metrics")},
        }

    def preprocess(self, texts: Sequence[str]) -> dict[str, Any]:
        """Token windows (a text longer than ``max_length`` gets several, overlapping by
        ``stride``), which text each came from, and its real token count."""
        batch = self.batch_tokenizer(texts, overflow=True)
        return {"encoding": batch.tensors, "owner": batch.owner, "tokens": batch.tokens,
                "n": len(texts)}  # fmt: skip

    def _run(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The windows' logits, left on the device (``postprocess`` reads them)."""
        import torch

        encoding = batch["encoding"]
        chunks = encoding["input_ids"].shape[0]
        logits = []
        with torch.inference_mode(), autocast(self.precision):
            for start in range(0, chunks, self.batch_size):
                part = {k: v[start : start + self.batch_size].to(self.device, non_blocking=True)
                        for k, v in encoding.items()}  # fmt: skip
                logits.append(self._forward(part).float())
        return torch.cat(logits), batch

    def _forward(self, batch: Any) -> Any:
        if self.traced is not None:
            return self.traced(batch)
        return self.model(**batch).logits

    def _combine(self, logits: np.ndarray, batch: dict[str, Any]) -> np.ndarray:
        probs = softmax(logits.astype(np.float64))[:, self.order]
        out = np.zeros((batch["n"], len(LABELS)))
        weight = np.zeros(batch["n"])
        np.add.at(out, batch["owner"], probs * batch["tokens"][:, None])
        np.add.at(weight, batch["owner"], batch["tokens"])
        return out / weight[:, None]

    def postprocess(self, logits: Any) -> np.ndarray:
        device_logits, batch = logits
        return self._combine(device_logits.cpu().numpy(), batch)

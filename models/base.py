"""The member contract: a batch of texts in, probabilities over the canonical labels out.

Members follow the transformers pipeline split: ``preprocess`` (texts -> batch), ``_forward``
(batch -> logits; the only step that touches a device) and ``postprocess`` (logits -> probabilities in
the order of ``riskwire.records.LABELS``). The base class runs them over length-sorted micro-batches, so
padding stays small, and puts results back in input order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from models.exceptions import ModelError
from riskwire.records import LABELS, Vote


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=axis, keepdims=True))


def mean_pool(tokens: Any, attention_mask: Any) -> Any:
    """Token vectors -> the L2-normalised mean over each text's real tokens, in fp32 (the
    sentence-transformers recipe: how MiniLM sums up a sentence)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def forget_embeddings(members: Iterable[Member]) -> None:
    """Drop the embeddings encoders remember, so the next timing pays for its own."""
    for member in members:
        encoder = getattr(member, "encoder", None)
        if encoder is not None:
            encoder.forget()


class Member(ABC):
    """Anything that maps texts to class probabilities over ``negative, neutral, positive``."""

    name: str
    version: str
    batch_size: int = 64

    def preprocess(self, texts: Sequence[str]) -> Any:
        return list(texts)

    @abstractmethod
    def _forward(self, batch: Any) -> Any:
        """Batch -> logits (or scores) for the canonical labels."""

    def postprocess(self, logits: Any) -> np.ndarray:
        return softmax(np.asarray(logits, dtype=np.float64))

    def _run(self, batch: Any) -> Any:
        """Hook for device placement and inference mode; torch members override it."""
        return self._forward(batch)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, shape ``(len(texts), 3)``, rows in input order."""
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float64)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        # every micro-batch is started before any answer is read: on a GPU the forward passes
        # queue up while the CPU tokenizes the next micro-batch (reading one waits for it)
        started = []
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            started.append((index, self._run(self.preprocess([texts[i] for i in index]))))
        for index, logits in started:
            out[index] = self.postprocess(logits)
        return out

    def describe(self) -> dict[str, Any]:
        """What the model registry records about this member: kind, artefacts, provenance."""
        return {"kind": type(self).__name__}

    def votes(self, texts: Sequence[str]) -> list[Vote]:
        return [self.vote_from(p) for p in self.predict_proba(texts)]

    def vote_from(self, probabilities: np.ndarray) -> Vote:
        return Vote(
            member=self.name,
            model_version=self.version,
            label=LABELS[int(np.argmax(probabilities))],  # type: ignore[arg-type]
            probabilities=tuple(float(p) for p in probabilities),  # type: ignore[arg-type]
        )


class NullMember(Member):
    """Always the same mildly neutral vote, at no cost: what benchmarks use to measure everything
    but the models."""

    name = "null"
    version = "null-1"

    def preprocess(self, texts: Sequence[str]) -> int:
        return len(texts)

    def _forward(self, batch: int) -> np.ndarray:
        return np.tile(np.array([0.25, 0.5, 0.25]), (batch, 1))

    def postprocess(self, logits: Any) -> np.ndarray:
        return np.asarray(logits)

    def describe(self) -> dict[str, Any]:
        return {"kind": "null"}


PRECISIONS = ("fp32", "bf16", "int8", "fp16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX): then bf16 autocast runs
    transformer members 2-3 times faster than fp32, with the same labels."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 on a GPU, bf16 on a CPU that has it, else fp32."""
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose auto or one of {PRECISIONS}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ModelError("fp16 (half precision) is for GPU members; use bf16 or int8 on the CPU")
    if precision == "int8" and device != "cpu":
        raise ModelError("int8 dynamic quantisation is for CPU members")
    return precision


def autocast(precision: str) -> Any:
    """The context a forward pass runs in: bf16 autocast on the CPU, else nothing."""
    import contextlib

    if precision == "bf16":
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TorchMember(Member):
    """A member whose forward pass runs under ``torch.inference_mode()`` on its own device."""

    device: str = "cpu"
    precision: str = "fp32"

    def _run(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode(), autocast(self.precision):
            batch = _to_device(batch, self.device)
            return self._forward(batch).float().cpu().numpy()


def _to_device(batch: Any, device: str) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch

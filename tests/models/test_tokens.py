"""models.tokens gives exactly what the transformers tokenizer call gives, without its overhead."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from models.tokens import BatchTokenizer

TEXTS = [
    "Acme beats estimates and raises guidance",
    "",
    "Profit fell 12 % to EUR 3.4 mn ; the outlook – «cautious» 🙁",
    "$ACME",
    " ".join(f"word{i} rose while margins fell" for i in range(60)),  # several windows
    "Ünïcödé naïve café résumé",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from models.embedding import default_encoder_path

    return AutoTokenizer.from_pretrained(default_encoder_path())


def reference(tokenizer: Any, texts: list[str], max_length: int, stride: int, overflow: bool):
    encoding = tokenizer(
        texts, truncation=True, max_length=max_length, stride=stride, padding=True,
        return_overflowing_tokens=overflow, return_tensors="pt",
    )  # fmt: skip
    owner = (
        encoding.pop("overflow_to_sample_mapping").numpy() if overflow else np.arange(len(texts))
    )
    return dict(encoding), owner


@pytest.mark.parametrize("overflow", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(("max_length", "stride"), [(32, 8), (128, 16), (16, 4)])
def test_the_same_ids_masks_types_and_windows_as_the_transformers_call(
    tokenizer: Any, overflow: bool, side: str, max_length: int, stride: int
) -> None:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = side
    fast = BatchTokenizer(tokenizer, max_length, stride)(TEXTS, overflow=overflow)
    tensors, owner = reference(tokenizer, TEXTS, max_length, stride, overflow)
    assert set(fast.tensors) == set(tensors) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, tensor in tensors.items():
        assert fast.tensors[name].dtype == torch.int64
        assert torch.equal(fast.tensors[name], tensor), name
    assert np.array_equal(fast.owner, owner)
    assert np.array_equal(fast.tokens, tensors["attention_mask"].sum(dim=1).numpy())
    if overflow:
        assert (fast.owner == 4).sum() > 1  # the long text was cut into windows


def test_a_model_without_token_types_gets_none(tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    fast = BatchTokenizer(tokenizer, 32)(TEXTS[:2])
    assert set(fast.tensors) == {"input_ids", "attention_mask"}


def test_an_empty_batch_is_empty(tokenizer: Any) -> None:
    fast = BatchTokenizer(tokenizer, 32)([])
    assert fast.tensors["input_ids"].shape[0] == 0 and fast.owner.shape == (0,)


def test_calls_do_not_disturb_the_transformers_tokenizer(tokenizer: Any) -> None:
    """The Rust tokenizer is copied: the transformers one keeps its own truncation settings."""
    before = tokenizer("one two three four five six seven", truncation=True, max_length=6)
    BatchTokenizer(tokenizer, 4, 1)(TEXTS, overflow=True)
    after = tokenizer("one two three four five six seven", truncation=True, max_length=6)
    assert before["input_ids"] == after["input_ids"]


class PythonOnly:
    """The real tokenizer without its Rust backend, as a Python-only tokenizer presents itself."""

    def __init__(self, tokenizer: Any) -> None:
        self.inner = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def test_a_python_tokenizer_goes_through_its_own_call_and_cannot_make_windows(
    tokenizer: Any,
) -> None:
    from models.exceptions import ModelError

    slow = BatchTokenizer(PythonOnly(tokenizer), 32)
    batch = slow(TEXTS)
    tensors, _ = reference(tokenizer, TEXTS, 32, 0, False)
    assert all(torch.equal(batch.tensors[k], tensors[k]) for k in tensors)
    assert np.array_equal(batch.owner, np.arange(len(TEXTS)))
    with pytest.raises(ModelError, match="not a fast tokenizer"):
        slow(TEXTS, overflow=True)


def test_windows_that_stop_short_of_a_long_texts_end_are_refused(tokenizer: Any) -> None:
    """tokenizers 0.23.1-0.23.2 cut a truncated text's overflow short (seen on the GPU machine):
    the probe at load time notices windows that never reach the end."""
    from models.exceptions import ModelError

    good = BatchTokenizer(tokenizer, 32, 8)
    good.check_windows()  # this release covers the whole text
    short = BatchTokenizer(tokenizer, 32, 8)
    encode = short._encode
    short._encode = lambda texts: encode([t[: len(t) // 3] for t in texts])  # as the bug does
    with pytest.raises(ModelError, match=r"tokenizers>=0\.23\.3"):
        short.check_windows()

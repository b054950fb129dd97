"""Members on a CUDA device in half precision: the shared contract, and the CPU's answers.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/models/test_gpu.py``. fp16 rounds each layer's output, and a text padded to a longer
batch goes through differently sized kernels, so batch against one-by-one agrees to 5e-3, not 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.embedding import EmbeddingHeadMember, SentenceEncoder
from models.hf import HFClassifierMember
from tests.models.test_members import TEXTS, assert_member_contract, random_head

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

FP16 = 5e-3


@pytest.mark.parametrize(("device", "pooled"), [("cuda", False), ("cuda:0", False), ("cuda", True)])
def test_classifier_member_keeps_the_contract_on_the_gpu_in_fp16(
    tiny_classifier_dir: Path, tiny_pooled_classifier_dir: Path, device: str, pooled: bool
) -> None:
    folder = tiny_pooled_classifier_dir if pooled else tiny_classifier_dir
    member = HFClassifierMember(str(folder), max_length=16, stride=4, batch_size=2,
                                device=device, precision="auto")  # fmt: skip
    assert member.precision == "fp16" and member.model.dtype == torch.float16
    assert next(member.model.parameters()).device.type == "cuda"
    assert member.version.endswith("-fp16-L16")
    assert_member_contract(member, FP16)
    cpu = HFClassifierMember(str(folder), max_length=16, stride=4, batch_size=2,
                             precision="fp32")  # fmt: skip
    assert np.allclose(member.predict_proba(TEXTS), cpu.predict_proba(TEXTS), atol=FP16)


def test_embedding_head_keeps_the_contract_on_the_gpu(tiny_encoder_dir: Path) -> None:
    encoder = SentenceEncoder(str(tiny_encoder_dir), device="cuda", precision="auto")
    assert encoder.precision == "fp16"
    member = EmbeddingHeadMember(encoder, random_head(encoder.dim))
    assert_member_contract(member, FP16)
    cpu = EmbeddingHeadMember(SentenceEncoder(str(tiny_encoder_dir)), random_head(encoder.dim))
    assert np.allclose(member.predict_proba(TEXTS), cpu.predict_proba(TEXTS), atol=FP16)


@pytest.mark.slow
def test_minilm_embeddings_in_fp16_on_the_gpu_match_fp32_on_the_cpu() -> None:
    """The shipped encoder's real weights: the GPU's half-precision sentence vectors point where
    the CPU's fp32 ones do."""
    gpu = SentenceEncoder(device="cuda", precision="auto").encode(TEXTS)
    cpu = SentenceEncoder(precision="fp32").encode(TEXTS)
    cosine = (gpu * cpu).sum(axis=1)
    assert cosine.min() > 0.999, cosine

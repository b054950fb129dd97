"""Inference throughput: the default ensemble against a naive baseline, in the same run.

    riskwire bench infer [--data FILE.jsonl] [--n 2000] [--json]

- **ensemble**: the configured ensemble (for a routing file, its default route's) as the stream runs
  it: ``judge`` on batches of ``score_batch_size`` texts (length-sorted micro-batches,
  ``inference_mode``, the configured precision, one embedding pass shared by the heads over one
  encoder, all members' votes fused).
- **naive**: the same members, one document at a time, each transformer member through a
  ``transformers.pipeline`` (``text-classification`` for classifier members; ``feature-extraction``
  plus mean pooling and the head for embedding heads and mean-pooled classifiers), lexicon members
  on one text per call, and the same fusion per document. This is how a first version of a
  scoring service is often written.

Prints docs/s of both and the ratio. With a CUDA device (or ``--device cuda``) it also measures a
3-member ensemble of BERT-base-sized classifiers (random weights from a config: speed only) in
half precision: docs/s for several micro-batch sizes, peak GPU memory, and the same naive
baseline on the GPU (pipelines in half precision too, so the ratio is batching alone). When the
default ensemble itself runs on the GPU (``RISKWIRE_DEVICE=cuda``), its fused labels are compared
with the same ensemble in fp32 on the CPU.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Member, softmax
from models.ensemble import Ensemble
from riskwire.settings import Settings

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fpb_dev.jsonl"
BUNDLED = Path(__file__).resolve().parent.parent / "models" / "data" / "train.jsonl"


def load_texts(path: Path, n: int) -> list[str]:
    texts = [
        str(json.loads(line).get("text") or "")
        for line in path.read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def mean_vector(features: Any) -> np.ndarray:
    """A feature-extraction pipeline's answer for one text -> its normalised mean token vector."""
    tokens = np.asarray(features[0], dtype=np.float64)  # (tokens, dim)
    pooled = tokens.mean(axis=0)
    return np.asarray(pooled / max(float(np.linalg.norm(pooled)), 1e-9))


def naive_scorer(member: Member, device: str) -> Callable[[str], np.ndarray]:
    """One text -> probabilities, the straightforward way for this kind of member.

    On a GPU the pipelines run in half precision, as the ensemble's members do there."""
    import torch
    from transformers import pipeline

    from models.embedding import EmbeddingHeadMember
    from models.hf import HFClassifierMember
    from models.pooled import MeanPooledClassifier

    pipe_device = -1 if device == "cpu" else int(device.partition(":")[2] or 0)
    dtype = torch.float16 if device.startswith("cuda") else None
    if isinstance(member, HFClassifierMember) and isinstance(member.model, MeanPooledClassifier):
        # no pipeline classifies from the mean token vector: features, then the layer
        features = pipeline(
            "feature-extraction", model=member.path, device=pipe_device, dtype=dtype,
            tokenize_kwargs={"truncation": True, "max_length": member.max_length},
        )  # fmt: skip
        layer = member.model.classifier
        weight = layer.weight.detach().float().cpu().numpy().astype(np.float64)
        bias = layer.bias.detach().float().cpu().numpy().astype(np.float64)
        scale, order = member.model.scale, member.order

        def run_pooled(text: str) -> np.ndarray:
            return softmax(scale * (weight @ mean_vector(features(text)) + bias))[order]

        return run_pooled
    if isinstance(member, HFClassifierMember):
        classify = pipeline(
            "text-classification", model=member.path, device=pipe_device, top_k=None,
            truncation=True, max_length=member.max_length, dtype=dtype,
        )  # fmt: skip
        names = [member.model.config.id2label[i] for i in member.order]

        def run_classifier(text: str) -> np.ndarray:
            scores = {d["label"]: d["score"] for d in classify(text)[0]}  # type: ignore[index]
            return np.array([scores[n] for n in names])

        return run_classifier
    if isinstance(member, EmbeddingHeadMember):
        extract = pipeline(
            "feature-extraction", model=member.encoder.path, device=pipe_device, dtype=dtype,
            tokenize_kwargs={"truncation": True, "max_length": member.encoder.max_length},
        )  # fmt: skip
        head = member.head

        def run_head(text: str) -> np.ndarray:
            return softmax(head.logits(mean_vector(extract(text))).astype(np.float64))

        return run_head
    return lambda text: member.predict_proba([text])[0]


def naive_rate(ensemble: Ensemble, texts: Sequence[str], device: str) -> float:
    scorers = [naive_scorer(m, device) for m in ensemble.members]
    for scorer in scorers:  # warm up
        scorer(texts[0])
    started = time.perf_counter()
    for text in texts:
        probs = np.stack([scorer(text) for scorer in scorers])[:, None, :]
        ensemble.fusion(probs, ensemble.weights)
    return len(texts) / (time.perf_counter() - started)


def batched_rate(ensemble: Ensemble, texts: Sequence[str], batch: int) -> float:
    ensemble.judge(list(texts[:batch]))  # warm up
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        ensemble.judge(list(texts[start : start + batch]))
    return len(texts) / (time.perf_counter() - started)


def bert_base_ensemble(device: str, members: int = 3) -> Ensemble:
    """``members`` BERT-base-sized classifiers with random weights, saved and loaded as hf members."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from models.embedding import default_encoder_path
    from models.hf import HFClassifierMember

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    folder = Path(tempfile.mkdtemp(prefix="riskwire-bert-base-"))
    built = []
    for k in range(members):
        torch.manual_seed(k)
        config = BertConfig(  # type: ignore[call-arg]
            num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
            label2id={"negative": 0, "neutral": 1, "positive": 2},
        )  # fmt: skip
        path = folder / f"bert-base-{k}"
        BertForSequenceClassification(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        built.append(HFClassifierMember(str(path), name=f"bert-base-{k}", device=device,
                                        batch_size=128, precision="fp16"))  # fmt: skip
    return Ensemble(built, fusion="soft", name="bert-base-x3")


def run(
    settings: Settings, data: Path | None, n: int, device: str | None, say: Callable[[str], None]
) -> dict[str, Any]:
    import torch

    from models.factory import build_ensemble

    source = data or (SHARED if SHARED.exists() else BUNDLED)
    texts = load_texts(source, n)
    ensemble = build_ensemble(settings)
    batch = settings.score_batch_size
    say(f"{len(texts):,} texts from {source.name}; ensemble {ensemble.version}: "
        f"{', '.join(m.name for m in ensemble.members)}; {torch.get_num_threads()} threads")  # fmt: skip
    fast = batched_rate(ensemble, texts, batch)
    say(f"  ensemble, batches of {batch}: {fast:,.1f} docs/s")
    naive_texts = texts[: max(100, len(texts) // 4)]
    model_device = settings.model_device
    slow = naive_rate(ensemble, naive_texts, model_device)
    say(f"  naive, one document at a time through pipelines: {slow:,.1f} docs/s")
    out: dict[str, Any] = {
        "ensemble": ensemble.version,
        "members": [m.name for m in ensemble.members],
        "texts": len(texts),
        "batch": batch,
        "threads": torch.get_num_threads(),
        "device": model_device,
        "ensemble_docs_per_s": round(fast, 1),
        "naive_docs_per_s": round(slow, 1),
        "ratio": round(fast / slow, 2),
    }
    say(f"  ratio: {out['ratio']:.2f}x")
    on_gpu = model_device.startswith("cuda")
    gpu = device or (model_device if on_gpu else "cuda" if torch.cuda.is_available() else None)
    if gpu and gpu.startswith("cuda"):
        if on_gpu:
            sample = texts[:1000]
            out["agreement_with_cpu_fp32"] = agreement_with_cpu(settings, ensemble, sample)
            say(
                f"  fused labels on {model_device} (half precision) = fp32 on the CPU for "
                f"{out['agreement_with_cpu_fp32']:.2%} of {len(sample):,} texts"
            )
        out["gpu"] = gpu_run(gpu, texts, say)
    return out


def agreement_with_cpu(settings: Settings, ensemble: Ensemble, texts: Sequence[str]) -> float:
    """The share of texts whose fused label is the same as the CPU's fp32 ensemble gives."""
    from models.factory import build_ensemble

    reference = build_ensemble(settings.model_copy(update={"device": "cpu", "precision": "fp32"}))
    ours = [j.label for j in ensemble.judge(list(texts))]
    theirs = [j.label for j in reference.judge(list(texts))]
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / max(len(texts), 1)


def gpu_run(device: str, texts: Sequence[str], say: Callable[[str], None]) -> dict[str, Any]:
    """3 x BERT-base in fp16: docs/s per micro-batch size, peak memory, and the naive baseline."""
    import torch

    big = bert_base_ensemble(device)
    name = torch.cuda.get_device_name(device)
    say(f"  3 x BERT-base (fp16) on {name}, {len(texts):,} texts in calls of 512:")
    torch.cuda.reset_peak_memory_stats(device)
    rates: dict[int, float] = {}
    for micro in (32, 64, 128, 256):
        for member in big.members:
            member.batch_size = micro
        rates[micro] = batched_rate(big, texts, 512)
        say(f"    micro-batches of {micro}: {rates[micro]:,.1f} docs/s")
    best = max(rates, key=lambda k: rates[k])
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    naive_texts = texts[: min(300, len(texts))]
    slow = naive_rate(big, naive_texts, device)
    say(f"    naive, one document at a time through fp16 pipelines: {slow:,.1f} docs/s")
    say(
        f"    ratio (best micro-batch {best}): {rates[best] / slow:.1f}x; peak memory {peak:.2f} GiB"
    )
    return {
        "device": name, "ensemble": "3 x BERT-base fp16",
        "docs_per_s": round(rates[best], 1), "micro_batch": best,
        "docs_per_s_by_micro_batch": {str(k): round(v, 1) for k, v in rates.items()},
        "naive_docs_per_s": round(slow, 1), "ratio": round(rates[best] / slow, 2),
        "peak_memory_gib": round(peak, 2),
    }  # fmt: skip

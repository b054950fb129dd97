"""A transformer's forward pass as a TorchScript trace, used only where it answers as the model does.

Why: a forward pass is some hundred torch calls, and each gives up the interpreter lock and must
take it back. In a worker the stream stages hold that lock on the event loop while the model scores
in a thread (and in the scoring process two batches score at once, each in a thread), so each call
queues behind them: the shipped ensemble scored 441 docs/s alone, 67 beside one busy Python thread.
A trace runs the whole pass in C++ and takes the lock back once (MiniLM beside a busy thread: 50
docs/s untraced, 105 traced, as fast as alone; a mean-pooled MiniLM classifier in bf16 beside one:
37-46 untraced, 84-87 traced, while alone the trace gains 2-4%).

Tracing records one path through the model's Python code. The probe, a padded batch of another
size and other lengths than the example's, must give the model's own answer, or the trace is not
used (with a warning): the model then runs as it is.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.base import autocast

log = logging.getLogger(__name__)

# how a trace's texts look: the example is padded (so the trace keeps the attention mask), the
# probe pads differently, with another batch size
EXAMPLE = ("a short one", "a longer example text, so that the batch is padded")
PROBE = ("one", "a third text, longer than " + "the examples " * 8, "two words")


# how far a trace's answer may be from the model's own: in fp32 the two are the same but for
# rounding; in bf16 they differ as much as one batch's answers and the same texts' one by one do (a
# MiniLM classifier's logits: 0.002 and 0.004 here), while a trace that took a wrong path through
# the model (a shape fixed, a mask left out) is off by whole units
TOLERANCE: dict[str, tuple[float, float]] = {
    "fp32": (1e-5, 1e-4),
    "bf16": (2e-2, 2e-2),
}  # rtol, atol


def traceable(device: str, precision: str) -> bool:
    """Where a trace is made: on the CPU, in fp32 or bf16 (int8 layers and GPUs run as they are)."""
    return device == "cpu" and precision in ("fp32", "bf16")


class TracedForward:
    """A traced forward pass, called with a token batch (a dict of tensors) like the model."""

    def __init__(self, traced: Any, keys: Sequence[str]) -> None:
        self.traced = traced
        self.keys = tuple(keys)

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        return self.traced(*(batch[k] for k in self.keys))


def trace_forward(
    model: Any,
    output: Callable[[Any], Any],
    tokenize: Callable[[Sequence[str]], Mapping[str, Any]],
    precision: str,
    what: str,
    compared: Callable[[Any, Mapping[str, Any]], Any] | None = None,
) -> TracedForward | None:
    """``output(model(**batch))`` as a trace over the tensors ``tokenize`` gives, in the arithmetic
    of ``precision`` (fp32 or bf16 on the CPU), or None where it cannot be traced or answers
    differently on the probe: ``compared(answer, probe)`` (default: all of it) equal within
    ``TOLERANCE``. ``what`` names the model in the warning. The model's weights become constants:
    it is for inference only from here on."""
    import torch

    model = model.requires_grad_(False)
    example = dict(tokenize(EXAMPLE))
    probe = dict(tokenize(PROBE))
    keys = tuple(example)

    class Forward(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return output(self.model(**dict(zip(keys, tensors, strict=True))))

    part = compared or (lambda answer, _probe: answer)
    try:
        with warnings.catch_warnings(), torch.no_grad(), autocast(precision):
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it fixed
            eager = Forward().eval()
            traced = torch.jit.freeze(torch.jit.trace(eager, tuple(example[k] for k in keys)))
            mine, its = (part(f(*(probe[k] for k in keys)).float(), probe) for f in (traced, eager))
            rtol, atol = TOLERANCE[precision]
            agrees = torch.allclose(mine, its, rtol=rtol, atol=atol)
    except Exception as exc:  # an architecture the tracer cannot follow: run it as it is
        log.warning("%s runs untraced: %s: %s", what, type(exc).__name__, exc)
        return None
    if not agrees:
        log.warning("%s runs untraced: its trace answers differently", what)
        return None
    return TracedForward(traced, keys)

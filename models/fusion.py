"""Fusion strategies: turn the members' probabilities into one calibrated judgement.

A strategy is called with ``probs`` of shape (members, documents, 3) and the member weights, and
returns fused probabilities of shape (documents, 3). Strategies that learn (temperatures and weights,
a stacker, Dawid–Skene confusion matrices) are fitted once, offline, on a validation split
(``fit``), and saved with the ensemble (``params`` / ``from_params``); at scoring time every one of
them is a fixed function of one document's votes, so a batch gives what one-by-one gives.

- ``majority``: weighted share of members voting for each label.
- ``soft``: weighted mean of the members' probabilities, each first sharpened or softened by its
  own temperature; ``fit`` learns the temperatures and the weights by minimising log-loss.
- ``stacking``: multinomial logistic regression over the members' log-probabilities.
- ``dawid-skene``: each member's confusion matrix and the class prior, learnt by EM from the votes
  alone (no labels); the fused result is the posterior over the true label.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from models.exceptions import ModelError

EPS = 1e-6


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _check(probs: np.ndarray, members: int | None = None) -> None:
    if probs.ndim != 3 or probs.shape[2] != 3:
        raise ModelError(
            f"fusion needs probabilities of shape (members, docs, 3), got {probs.shape}"
        )
    if members is not None and probs.shape[0] != members:
        raise ModelError(f"fitted for {members} members, got votes from {probs.shape[0]}")


class Fusion:
    """Base strategy; ``fitted`` says whether ``fit`` has run (or params were loaded)."""

    name: ClassVar[str]
    needs_labels: ClassVar[bool] = False
    learns: ClassVar[bool] = False

    def __init__(self) -> None:
        self.fitted = not self.learns

    def __call__(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        _check(probs)
        return self.fuse(probs, weights / weights.sum())

    def fuse(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, probs: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> Fusion:
        return self

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Fusion:
        return cls()

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "fitted": self.fitted, **self.params()}


class MajorityVote(Fusion):
    name = "majority"

    def fuse(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        votes = np.zeros_like(probs)
        np.put_along_axis(votes, probs.argmax(axis=2)[..., None], 1.0, axis=2)
        return np.asarray(np.tensordot(weights, votes, axes=1))


class SoftVote(Fusion):
    """Weighted mean of temperature-scaled member probabilities."""

    name = "soft"
    learns = True
    needs_labels = True

    def __init__(
        self, temperatures: list[float] | None = None, weights: list[float] | None = None
    ) -> None:
        super().__init__()
        self.temperatures = None if temperatures is None else np.asarray(temperatures, float)
        self.learned_weights = None if weights is None else np.asarray(weights, float)
        self.fitted = self.temperatures is not None

    def scaled(self, probs: np.ndarray) -> np.ndarray:
        if self.temperatures is None:
            return probs
        _check(probs, len(self.temperatures))
        return _softmax(_log(probs) / self.temperatures[:, None, None])

    def fuse(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if self.learned_weights is not None:
            weights = self.learned_weights
        return np.asarray(np.tensordot(weights, self.scaled(probs), axes=1))

    def fit(self, probs: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> SoftVote:
        """Temperatures per member, then weights on the simplex, each by minimising log-loss."""
        import torch

        if labels is None:
            raise ModelError("soft-vote fitting needs labels")
        _check(probs)
        logp = torch.from_numpy(_log(probs))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        temps = []
        for m in range(probs.shape[0]):
            log_t = torch.zeros(1, requires_grad=True)
            _minimise([log_t], lambda lt, m=m: torch.nn.functional.cross_entropy(
                logp[m] / lt[0].exp(), y))  # fmt: skip
            temps.append(float(log_t.detach().exp()))
        t = torch.tensor(temps, dtype=torch.float64)
        scaled = torch.softmax(logp / t[:, None, None], dim=2)
        w0 = torch.from_numpy(np.log(np.clip(weights / weights.sum(), EPS, None)))
        raw = w0.clone().requires_grad_(True)

        def loss(params: list[torch.Tensor]) -> torch.Tensor:
            w = torch.softmax(params[0], dim=0)
            fused = torch.tensordot(w, scaled, dims=1)
            return torch.nn.functional.nll_loss(torch.log(fused.clamp(min=EPS)), y)

        _minimise([raw], lambda p: loss(p))
        self.temperatures = np.asarray(temps)
        self.learned_weights = torch.softmax(raw.detach(), dim=0).numpy()
        self.fitted = True
        return self

    def params(self) -> dict[str, Any]:
        if self.temperatures is None:
            return {}
        return {"temperatures": _round(self.temperatures),
                "weights": _round(self.learned_weights)}  # fmt: skip

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SoftVote:
        return cls(params.get("temperatures"), params.get("weights"))


class Stacking(Fusion):
    """A learned combiner: softmax(W · [log p_1, ..., log p_M] + b)."""

    name = "stacking"
    learns = True
    needs_labels = True

    def __init__(self, weight: list[list[float]] | None = None, bias: list[float] | None = None):
        super().__init__()
        self.weight = None if weight is None else np.asarray(weight, float)
        self.bias = None if bias is None else np.asarray(bias, float)
        self.fitted = self.weight is not None

    @staticmethod
    def features(probs: np.ndarray) -> np.ndarray:
        return np.concatenate(list(_log(probs)), axis=1)  # (docs, members * 3)

    def fuse(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if self.weight is None or self.bias is None:
            raise ModelError("the stacking fusion has not been fitted: run 'riskwire models fuse'")
        x = self.features(probs)
        if x.shape[1] != self.weight.shape[0]:
            raise ModelError(f"stacker fitted on {self.weight.shape[0] // 3} members, "
                             f"got {probs.shape[0]}")  # fmt: skip
        return _softmax(x @ self.weight + self.bias)

    def fit(self, probs: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> Stacking:
        from models.training import fit_softmax

        if labels is None:
            raise ModelError("stacking needs labels")
        _check(probs)
        head = fit_softmax(self.features(probs), np.asarray(labels), l2=1e-3)
        self.weight, self.bias = head.weight.astype(float), head.bias.astype(float)
        self.fitted = True
        return self

    def params(self) -> dict[str, Any]:
        if self.weight is None or self.bias is None:
            return {}
        return {"weight": [_round(row) for row in self.weight], "bias": _round(self.bias)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Stacking:
        return cls(params.get("weight"), params.get("bias"))


class DawidSkene(Fusion):
    """Dawid & Skene (1979): latent true labels, one confusion matrix per member, fitted by EM.

    Needs no labels: ``fit`` takes the members' votes on an unlabelled corpus. Unfitted, every
    member is assumed right 70% of the time, which makes it a confidence-weighted majority vote.
    """

    name = "dawid-skene"
    learns = True

    def __init__(
        self, confusion: list[list[list[float]]] | None = None, prior: list[float] | None = None
    ) -> None:
        super().__init__()
        self.confusion = None if confusion is None else np.asarray(confusion, float)
        self.prior = np.full(3, 1 / 3) if prior is None else np.asarray(prior, float)
        self.fitted = self.confusion is not None

    def _confusion(self, members: int) -> np.ndarray:
        if self.confusion is None:
            return np.tile(np.eye(3) * 0.55 + 0.15, (members, 1, 1))
        if self.confusion.shape[0] != members:
            raise ModelError(f"Dawid-Skene fitted on {self.confusion.shape[0]} members, "
                             f"got {members}")  # fmt: skip
        return self.confusion

    def posterior(self, votes: np.ndarray, confusion: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """votes (members, docs) of label indices -> P(true label | votes), (docs, 3)."""
        log_post = np.tile(np.log(prior), (votes.shape[1], 1))
        for m in range(votes.shape[0]):
            # confusion[m][true, voted]
            log_post += np.log(np.clip(confusion[m][:, votes[m]].T, EPS, None))
        return _softmax(log_post)

    def fuse(self, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        votes = probs.argmax(axis=2)
        return self.posterior(votes, self._confusion(probs.shape[0]), self.prior)

    def fit(
        self, probs: np.ndarray, labels: np.ndarray | None, weights: np.ndarray,
        iterations: int = 100,
    ) -> DawidSkene:  # fmt: skip
        """EM from the (weighted) majority vote; labels, if given, are ignored."""
        _check(probs)
        votes = probs.argmax(axis=2)
        members = probs.shape[0]
        post = MajorityVote().fuse(probs, weights / weights.sum()) + EPS
        post /= post.sum(axis=1, keepdims=True)
        for _ in range(iterations):
            prior = post.mean(axis=0)
            confusion = np.zeros((members, 3, 3))
            for m in range(members):
                for k in range(3):
                    confusion[m][:, k] = post[votes[m] == k].sum(axis=0)
            confusion += 0.01  # smoothing: a label a member never gives keeps a small chance
            confusion /= confusion.sum(axis=2, keepdims=True)
            new = self.posterior(votes, confusion, prior)
            done = np.abs(new - post).max() < 1e-6
            post = new
            if done:
                break
        self.confusion, self.prior, self.fitted = confusion, prior, True
        return self

    def params(self) -> dict[str, Any]:
        if self.confusion is None:
            return {}
        return {"confusion": [[_round(r) for r in m] for m in self.confusion],
                "prior": _round(self.prior)}  # fmt: skip

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DawidSkene:
        return cls(params.get("confusion"), params.get("prior"))


def _round(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]


def _minimise(params: list[Any], loss: Any) -> None:
    import torch

    optimiser = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = loss(params)
        value.backward()
        return value

    optimiser.step(closure)


FUSIONS: dict[str, type[Fusion]] = {
    cls.name: cls for cls in (MajorityVote, SoftVote, Stacking, DawidSkene)
}


def get_fusion(name: str, params: dict[str, Any] | None = None) -> Fusion:
    try:
        cls = FUSIONS[name]
    except KeyError:
        raise ModelError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}") from None
    return cls.from_params(params or {})


def soft_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the members' probability vectors (no temperatures)."""
    return SoftVote()(probs, weights)


def majority_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return MajorityVote()(probs, weights)


def disagreement(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Jensen-Shannon divergence among members, scaled to [0, 1] by its bound."""
    members = probs.shape[0]
    if members < 2:
        return np.zeros(probs.shape[1])
    w = weights / weights.sum()
    mean = np.tensordot(w, probs, axes=1)
    js = _entropy(mean) - np.tensordot(w, _entropy(probs), axes=1)
    bound = -np.sum(w * np.log(w)) if np.all(w > 0) else np.log(members)
    return np.asarray(np.clip(js / min(bound, np.log(3)), 0.0, 1.0))


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return np.asarray(-(q * np.log(q)).sum(axis=-1))

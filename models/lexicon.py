"""A lexicon member: phrase-aware financial word list with negation and intensifiers, no weights."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Member
from models.exceptions import ModelError

DEFAULT_LEXICON = Path(__file__).resolve().parent / "data" / "finlex.tsv"
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|\$[a-z]+")
NEGATORS = frozenset(
    {
        "not",
        "no",
        "never",
        "without",
        "neither",
        "nor",
        "isn't",
        "wasn't",
        "aren't",
        "didn't",
        "doesn't",
        "don't",
        "won't",
        "hardly",
        "barely",
    }
)
INTENSIFIERS = {
    "sharply": 1.4,
    "significantly": 1.3,
    "steep": 1.3,
    "steeply": 1.3,
    "massive": 1.4,
    "huge": 1.3,
    "sharp": 1.3,
    "deeply": 1.3,
    "heavily": 1.3,
    "strongly": 1.2,
    "slightly": 0.6,
    "modestly": 0.7,
    "marginally": 0.6,
}
NEGATION_SCOPE = 3
MAX_PHRASE = 4
ALGORITHM_VERSION = "a1"  # bump when the scoring code changes, so stored votes say which


def load_lexicon(path: Path) -> dict[tuple[str, ...], float]:
    lexicon: dict[tuple[str, ...], float] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelError(f"cannot read lexicon {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            term, weight = line.split("\t")
            lexicon[tuple(_TOKEN.findall(term.lower()))] = float(weight)
        except ValueError as exc:
            raise ModelError(f"{path}:{number}: expected 'term<TAB>weight', got {line!r}") from exc
    return lexicon


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("’", "'"))


class LexiconMember(Member):
    """Sums matched term weights into negative and positive evidence, against a neutral prior."""

    def __init__(
        self,
        path: Path = DEFAULT_LEXICON,
        name: str = "finlex",
        neutral_prior: float = 1.0,
        scale: float = 1.2,
        terms: dict[tuple[str, ...], float] | None = None,
    ) -> None:
        """A lexicon from a ``term<TAB>weight`` file, or given ``terms`` that ``path`` came from."""
        self.name = name
        self.path = path
        self.lexicon = load_lexicon(path) if terms is None else terms
        self.neutral_prior = neutral_prior
        self.scale = scale
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        self.version = f"{name}-{ALGORITHM_VERSION}-{digest}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "lexicon",
            "artifact": str(self.path),
            "terms": len(self.lexicon),
            "algorithm": ALGORITHM_VERSION,
        }

    def preprocess(self, texts: Sequence[str]) -> list[list[str]]:
        return [tokenize(t) for t in texts]

    def _forward(self, batch: list[list[str]]) -> np.ndarray:
        return np.array([self.evidence(tokens) for tokens in batch], dtype=np.float64)

    def evidence(self, tokens: list[str]) -> tuple[float, float, float]:
        negative = positive = 0.0
        i = 0
        while i < len(tokens):
            match = self._match(tokens, i)
            if match is None:
                i += 1
                continue
            length, weight = match
            weight *= self._modifier(tokens, i, length)
            if weight < 0:
                negative -= weight
            else:
                positive += weight
            i += length
        return (negative, self.neutral_prior, positive)

    def _match(self, tokens: list[str], i: int) -> tuple[int, float] | None:
        for length in range(min(MAX_PHRASE, len(tokens) - i), 0, -1):
            weight = self.lexicon.get(tuple(tokens[i : i + length]))
            if weight is not None:
                return length, weight
        return None

    @staticmethod
    def _modifier(tokens: list[str], i: int, length: int) -> float:
        """Negation in the few words before; an intensifier just before or just after."""
        window = tokens[max(0, i - NEGATION_SCOPE) : i]
        before = INTENSIFIERS.get(tokens[i - 1]) if i else None
        after = INTENSIFIERS.get(tokens[i + length]) if i + length < len(tokens) else None
        factor = before or after or 1.0
        if any(t in NEGATORS or t.endswith("n't") for t in window):
            factor *= -0.6
        return factor

    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        from models.base import softmax

        return softmax(np.log1p(logits) * self.scale * 2.0)

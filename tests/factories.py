"""Record factories for tests: sensible defaults, override what the test is about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from riskwire.records import Alert, Document, Kind, Label, Score, TickerLink, Vote

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
_ids = count()

# model registry entries for a document scored twice in one run: ``test-1`` (a router whose
# ``news`` ensemble has members ``finlex-1`` and ``ft-2``), then ``test-2`` (member ``m1-1``)
TWO_VERSIONS = [
    ("default", "test-1", {"kind": "router", "ensembles": {"news": "news-1"}}),
    ("news", "news-1", {"kind": "ensemble", "members": ["finlex-1", "ft-2"]}),
    ("later", "test-2", {"kind": "ensemble", "members": ["m1-1"]}),
]


# a member's vote whose probabilities lean to its label
LEANING: dict[str, tuple[float, float, float]] = {
    "negative": (0.7, 0.2, 0.1), "neutral": (0.2, 0.6, 0.2), "positive": (0.1, 0.2, 0.7),
}  # fmt: skip


def make_vote(member: str, model_version: str, label: Label) -> Vote:
    return Vote(
        member=member, model_version=model_version, label=label, probabilities=LEANING[label]
    )


def make_document(**overrides: Any) -> Document:
    n = next(_ids)
    fields: dict[str, Any] = {
        "id": f"{n:032x}",
        "source": "test",
        "kind": Kind.NEWS,
        "title": f"Headline {n}",
        "text": f"Headline {n}",
        "published_at": T0 + timedelta(minutes=n),
        "fetched_at": T0 + timedelta(minutes=n, seconds=5),
        "tickers": (TickerLink(ticker="ACME", relevance=1.0),),
    }
    fields.update(overrides)
    return Document(**fields)


def make_score(
    document_id: str | None = None,
    ticker: str | None = "ACME",
    score: float = -0.6,
    published_at: datetime = T0,
    **overrides: Any,
) -> Score:
    neg = max(0.0, -score) + (1 - abs(score)) / 3
    pos = max(0.0, score) + (1 - abs(score)) / 3
    probabilities = (neg, 1.0 - neg - pos, pos)
    label: Label = "negative" if score < -0.2 else "positive" if score > 0.2 else "neutral"
    fields: dict[str, Any] = {
        "document_id": document_id or f"{next(_ids):032x}",
        "ticker": ticker,
        "kind": Kind.NEWS,
        "published_at": published_at,
        "model_version": "test-1",
        "label": label,
        "probabilities": probabilities,
        "score": score,
        "confidence": max(probabilities),
        "disagreement": 0.1,
        "votes": (
            Vote(member="m1", model_version="m1-1", label=label, probabilities=probabilities),
        ),
    }
    fields.update(overrides)
    return Score(**fields)


def make_alert(state: str = "firing", **overrides: Any) -> Alert:
    n = next(_ids)
    start = T0 + timedelta(hours=n)
    fields: dict[str, Any] = {
        "id": f"{n:032x}", "rule": "negative_surge", "ticker": "ACME", "severity": "warning",
        "state": state, "window_start": start, "window_end": start + timedelta(hours=2),
        "event_time": start + timedelta(hours=2 if state == "firing" else 3),
        "values": {"documents": 5.0, "negative_share": 0.8},
        "thresholds": {"min_documents": 4.0, "negative_share": 0.6},
        "evidence": ("d1", "d2"), "explanation": "ACME: 5 documents in 120 min, 80% negative",
    }  # fmt: skip
    fields.update(overrides)
    return Alert(**fields)

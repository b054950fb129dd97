"""Documents -> fused Scores through an ensemble, one batch at a time."""

from __future__ import annotations

from collections.abc import Sequence

from models.routing import Judges
from riskwire.records import Document, Score
from streams.pipeline.normalise import scoring_text


def score_documents(
    ensemble: Judges, docs: Sequence[Document], run_id: str = "live"
) -> list[Score]:
    """One Score per document (``ticker`` unset), in input order; a router sends each document to
    the ensemble for its kind and language."""
    version, judgements = ensemble.judge_versioned(
        [scoring_text(d) for d in docs], [(d.kind.value, d.lang) for d in docs]
    )
    return [
        Score(
            document_id=d.id, ticker=None, kind=d.kind, published_at=d.published_at,
            model_version=version, label=j.label, probabilities=j.probabilities,
            score=j.score, confidence=j.confidence, disagreement=j.disagreement,
            votes=j.votes, run_id=run_id, story_id=d.story_id,
        )
        for d, j in zip(docs, judgements, strict=True)
    ]  # fmt: skip


def fan_out(score: Score, doc: Document) -> list[Score]:
    """One Score per linked ticker, for the ticker-keyed ``scored`` topic: the fused score without
    the members' votes (they are stored with the document; nothing downstream reads them)."""
    return [score.model_copy(update={"ticker": link.ticker, "votes": ()}) for link in doc.tickers]

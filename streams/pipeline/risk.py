"""Per-ticker rolling sentiment in event time, and the negative-surge warning rule.

Everything is driven by the documents' own ``published_at``; nothing reads the clock. Rules are
evaluated on hopping windows aligned to the epoch (length ``window``, a new one every ``hop``), so the
window a document falls in does not depend on the order documents arrive in: the ``scored`` topic
interleaves partitions, and documents of one ticker do not arrive in event-time order. Each rolling
sentiment row is the trailing window ending at its document, as known when it arrived.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from riskwire.records import Alert, AlertState, Score, Severity, stable_id


@dataclass(frozen=True, order=True)
class Event:
    published_at: datetime
    document_id: str
    score: float = field(default=0.0, compare=False)
    negative: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class WindowStats:
    ticker: str
    start: datetime
    end: datetime
    documents: int
    mean_score: float
    negative_share: float


class TickerWindow:
    """The recent events of one ticker, kept sorted by event time; duplicates are ignored."""

    def __init__(self, ticker: str, length: timedelta, lateness: timedelta) -> None:
        self.ticker = ticker
        self.length = length
        self.lateness = lateness
        self.events: list[Event] = []
        self._ids: set[str] = set()
        self.high_water: datetime | None = None

    def add(self, event: Event) -> bool:
        if event.document_id in self._ids:
            return False
        bisect.insort(self.events, event)
        self._ids.add(event.document_id)
        if self.high_water is None or event.published_at > self.high_water:
            self.high_water = event.published_at
        self._evict()
        return True

    def _evict(self) -> None:
        assert self.high_water is not None
        horizon = self.high_water - self.length - self.lateness
        cut = bisect.bisect_left(self.events, Event(horizon, ""))
        for old in self.events[:cut]:
            self._ids.discard(old.document_id)
        del self.events[:cut]

    def stats_at(self, end: datetime) -> WindowStats:
        """Statistics over the events in ``(end - length, end]``."""
        lo = bisect.bisect_right(self.events, Event(end - self.length, "\uffff"))
        hi = bisect.bisect_right(self.events, Event(end, "\uffff"))
        return self._stats(self.events[lo:hi], end - self.length, end)

    def stats_between(self, start: datetime, end: datetime) -> WindowStats:
        """Statistics over the events in ``[start, end)``."""
        return self._stats(self._between(start, end), start, end)

    def evidence(self, start: datetime, end: datetime, limit: int = 5) -> tuple[str, ...]:
        """The most negative documents in ``[start, end)``, worst first."""
        inside = [e for e in self._between(start, end) if e.negative]
        worst = heapq.nsmallest(limit, inside, key=lambda e: (e.score, e.document_id))
        return tuple(e.document_id for e in worst)

    def _between(self, start: datetime, end: datetime) -> list[Event]:
        lo = bisect.bisect_left(self.events, Event(start, ""))
        hi = bisect.bisect_left(self.events, Event(end, ""))
        return self.events[lo:hi]

    def _stats(self, inside: list[Event], start: datetime, end: datetime) -> WindowStats:
        count = len(inside)
        total = negative = 0.0
        for e in inside:
            total += e.score
            negative += e.negative
        return WindowStats(
            ticker=self.ticker,
            start=start,
            end=end,
            documents=count,
            mean_score=total / count if count else 0.0,
            negative_share=negative / count if count else 0.0,
        )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_starts(t: datetime, length: timedelta, hop: timedelta) -> list[datetime]:
    """Starts of the aligned windows ``[s, s + length)`` that contain ``t``, oldest first."""
    newest = EPOCH + ((t - EPOCH) // hop) * hop
    count = -(-length // hop)  # ceil
    starts = [newest - i * hop for i in range(count)]
    return [s for s in reversed(starts) if s <= t < s + length]


@dataclass(frozen=True)
class NegativeSurgeRule:
    """Fires when a ticker's window holds enough documents that are mostly and strongly negative."""

    window: timedelta = timedelta(hours=2)
    hop: timedelta = timedelta(minutes=30)
    min_documents: int = 4
    negative_share: float = 0.6
    mean_score: float = -0.25
    name: str = "negative_surge"

    def holds(self, stats: WindowStats) -> bool:
        return (
            stats.documents >= self.min_documents
            and stats.negative_share >= self.negative_share
            and stats.mean_score <= self.mean_score
        )

    def severity(self, stats: WindowStats) -> Severity:
        severe = stats.documents >= 2 * self.min_documents and stats.negative_share >= 0.8
        return Severity.CRITICAL if severe else Severity.WARNING

    def thresholds(self) -> dict[str, float]:
        return {
            "min_documents": float(self.min_documents),
            "negative_share": self.negative_share,
            "mean_score": self.mean_score,
            "window_minutes": self.window.total_seconds() / 60,
        }


@dataclass
class RiskUpdate:
    """What one score produced: its rolling-sentiment row (None for a duplicate) and any alerts."""

    row: dict[str, Any] | None = None
    alerts: list[Alert] = field(default_factory=list)


class RiskEngine:
    """Per-ticker windows and rule state for the tickers one worker owns."""

    def __init__(
        self, rule: NegativeSurgeRule, run_id: str = "live", lateness: timedelta = timedelta(days=4)
    ) -> None:
        self.rule = rule
        self.run_id = run_id
        self.lateness = lateness
        self.windows: dict[str, TickerWindow] = {}
        self.firing: dict[str, Alert] = {}
        self.last_fired: dict[str, datetime] = {}

    def process(self, score: Score) -> RiskUpdate:
        if score.ticker is None:
            return RiskUpdate()
        window = self.windows.get(score.ticker)
        if window is None:
            window = TickerWindow(score.ticker, self.rule.window, self.lateness)
            self.windows[score.ticker] = window
        event = Event(score.published_at, score.document_id, score.score, score.label == "negative")
        if not window.add(event):
            return RiskUpdate()
        trailing = window.stats_at(score.published_at)
        row = {
            "run_id": self.run_id, "ticker": score.ticker, "document_id": score.document_id,
            "published_at": score.published_at, "score": score.score,
            "window_documents": trailing.documents, "window_mean_score": trailing.mean_score,
            "window_negative_share": trailing.negative_share,
        }  # fmt: skip
        return RiskUpdate(row=row, alerts=self._evaluate(window, trailing))

    def _evaluate(self, window: TickerWindow, trailing: WindowStats) -> list[Alert]:
        """Rule state after a document at ``trailing.end``: resolve, then fire, per aligned window."""
        starts = window_starts(trailing.end, self.rule.window, self.rule.hop)
        windows = [window.stats_between(s, s + self.rule.window) for s in starts]
        alerts = self._resolve(windows, trailing)
        for stats in windows:
            if self.rule.holds(stats) and self._may_fire(window.ticker, stats.start):
                alert = self._alert(stats, window.evidence(stats.start, stats.end))
                self.firing[window.ticker] = alert
                self.last_fired[window.ticker] = stats.start
                alerts.append(alert)
        return alerts

    def _may_fire(self, ticker: str, start: datetime) -> bool:
        """Not while the ticker is firing, nor for a window overlapping the last one that fired."""
        if ticker in self.firing:
            return False
        last = self.last_fired.get(ticker)
        return last is None or abs(start - last) >= self.rule.window

    def _resolve(self, windows: list[WindowStats], current: WindowStats) -> list[Alert]:
        """A firing alert resolves at the first document after its window whose windows are calm."""
        t = current.end
        active = self.firing.get(current.ticker)
        if active is None or t < active.window_end:
            return []
        if any(self.rule.holds(stats) for stats in windows):
            return []
        del self.firing[current.ticker]
        return [
            active.model_copy(
                update={
                    "state": AlertState.RESOLVED,
                    "event_time": t,
                    "explanation": active.explanation
                    + f"; resolved at {t.isoformat()}: {current.documents} documents in the "
                    f"trailing window, {current.negative_share:.0%} negative, "
                    f"mean score {current.mean_score:+.2f}",
                }
            )
        ]

    def _alert(self, stats: WindowStats, evidence: tuple[str, ...]) -> Alert:
        values = {
            "documents": float(stats.documents),
            "negative_share": round(stats.negative_share, 4),
            "mean_score": round(stats.mean_score, 4),
        }
        minutes = int(self.rule.window.total_seconds() // 60)
        return Alert(
            id=stable_id(self.rule.name, stats.ticker, self.run_id, stats.start.isoformat()),
            run_id=self.run_id,
            rule=self.rule.name,
            ticker=stats.ticker,
            severity=self.rule.severity(stats),
            state=AlertState.FIRING,
            window_start=stats.start,
            window_end=stats.end,
            event_time=stats.end,
            values=values,
            thresholds=self.rule.thresholds(),
            evidence=evidence,
            explanation=(
                f"{stats.ticker}: {stats.documents} documents in {minutes} min, "
                f"{stats.negative_share:.0%} negative (threshold {self.rule.negative_share:.0%}), "
                f"mean score {stats.mean_score:+.2f} (threshold {self.rule.mean_score:+.2f})"
            ),
        )

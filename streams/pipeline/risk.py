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
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from riskwire.records import Alert, AlertState, Severity, stable_id


class Scored(Protocol):
    """What the engine reads of a score: a ``Score``, or a replay's lighter cached form."""

    @property
    def document_id(self) -> str: ...
    @property
    def ticker(self) -> str | None: ...
    @property
    def published_at(self) -> datetime: ...
    @property
    def score(self) -> float: ...
    @property
    def label(self) -> str: ...
    @property
    def story_id(self) -> str | None: ...


class Event(NamedTuple):
    """One document in a ticker's window; a tuple, so sorting and bisecting run in C. ``story`` is
    the story it belongs to (its own id when it is the first or stands alone)."""

    published_at: datetime
    document_id: str
    score: float = 0.0
    negative: bool = False
    story: str = ""

    @property
    def key(self) -> str:
        """What counts once in a window: the story (copies of it are not independent evidence)."""
        return self.story or self.document_id


class WindowStats(NamedTuple):
    ticker: str
    start: datetime
    end: datetime
    documents: int
    mean_score: float
    negative_share: float


class TickerWindow:
    """The recent events of one ticker, kept sorted by event time; duplicates are ignored.

    Events older than ``horizon`` before the newest one are evicted: ``horizon`` is the longest
    window anything looks back over plus the allowed lateness.
    """

    def __init__(self, ticker: str, horizon: timedelta, hops: Sequence[timedelta] = ()) -> None:
        self.ticker = ticker
        self.horizon = horizon
        self.events: list[Event] = []
        self._ids: set[str] = set()
        self.high_water: datetime | None = None
        # per rule hop: [documents, score sum, negatives] per aligned bucket, so an aligned window
        # costs a few additions instead of a scan; updated on add, so arrival order does not matter
        # (keyed by the bucket's number since the epoch: integers hash far faster than datetimes)
        self.buckets: dict[timedelta, dict[int, list[float]]] = {h: {} for h in hops}
        self._adds = 0

    def add(self, event: Event) -> bool:
        """Take an event; False for a duplicate, or a copy of a story already in the window."""
        ident = event.key
        if ident in self._ids:
            return False
        bisect.insort(self.events, event)
        self._ids.add(ident)
        if self.high_water is None or event.published_at > self.high_water:
            self.high_water = event.published_at
        self._evict()
        if event.published_at >= self.high_water - self.horizon:  # not evicted at once
            t = event.published_at
            for hop, buckets in self.buckets.items():
                key = (t - EPOCH) // hop
                bucket = buckets.get(key)
                if bucket is None:
                    buckets[key] = [1, event.score, float(event.negative)]
                else:
                    bucket[0] += 1
                    bucket[1] += event.score
                    bucket[2] += event.negative
        self._adds += 1
        if self._adds % 512 == 0:  # buckets no window can reach again
            oldest = self.high_water - 2 * self.horizon
            for hop, buckets in self.buckets.items():
                first = (oldest - EPOCH) // hop
                for key in [k for k in buckets if k < first]:
                    del buckets[key]
        return True

    def _evict(self) -> None:
        assert self.high_water is not None
        oldest = self.high_water - self.horizon
        if self.events[0].published_at >= oldest:  # the common case: nothing to evict
            return
        cut = bisect.bisect_left(self.events, (oldest,))
        if cut:
            for old in self.events[:cut]:
                self._ids.discard(old.key)
            del self.events[:cut]

    def stats_at(self, end: datetime, length: timedelta) -> WindowStats:
        """Statistics over the events in ``(end - length, end]``."""
        events = self.events
        start = end - length
        lo = bisect.bisect_right(events, (start, "\uffff"))
        hi = bisect.bisect_right(events, (end, "\uffff"), lo)
        return self._stats(events[lo:hi], start, end)

    def count_between(self, start: datetime, end: datetime) -> int:
        """How many events lie in ``[start, end)``."""
        events = self.events
        return bisect.bisect_left(events, (end,)) - bisect.bisect_left(events, (start,))

    def stats_between(self, start: datetime, end: datetime) -> WindowStats:
        """Statistics over the events in ``[start, end)``."""
        return self._stats(self._between(start, end), start, end)

    def aligned_windows(
        self, t: datetime, length: timedelta, hop: timedelta, at_least: int = 0
    ) -> list[WindowStats]:
        """Statistics of every window ``[s, s + length)`` aligned to ``hop`` that holds ``t`` and at
        least ``at_least`` documents, oldest first (as ``window_starts``), summed from the hop
        buckets when length is a whole number of hops, else scanned."""
        buckets = self.buckets.get(hop)
        if buckets is None or length % hop:
            windows = [self.stats_between(s, s + length) for s in window_starts(t, length, hop)]
            return [w for w in windows if w.documents >= at_least]
        k = length // hop
        newest = (t - EPOCH) // hop
        first = newest - k + 1
        get = buckets.get
        cells = [get(i, _EMPTY) for i in range(first, newest + k)]
        ticker = self.ticker
        start = EPOCH + first * hop
        out = []
        for j in range(k):
            count = total = negative = 0.0
            for cell in cells[j : j + k]:
                count += cell[0]
                total += cell[1]
                negative += cell[2]
            n = int(count)
            if n >= at_least:
                out.append(
                    WindowStats(ticker, start, start + length, n, total / n if n else 0.0,
                                negative / n if n else 0.0)
                )  # fmt: skip
            start += hop
        return out

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

    def state(self) -> list[list[Any]]:
        return [
            [e.published_at.isoformat(), e.document_id, e.score, e.negative, e.story]
            for e in self.events
        ]

    def restore(self, events: list[list[Any]]) -> None:
        for published_at, document_id, score, negative, *story in events:  # story: since 0007
            self.add(
                Event(datetime.fromisoformat(published_at), document_id, score, negative,
                      story[0] if story else "")
            )  # fmt: skip


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMPTY = (0, 0.0, 0.0)  # a bucket no document fell in


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

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.hop <= timedelta(0) or self.hop > self.window:
            raise ValueError(f"rule {self.name!r}: need 0 < hop <= window")
        if self.min_documents < 1 or not 0.0 <= self.negative_share <= 1.0:
            raise ValueError(
                f"rule {self.name!r}: need min_documents >= 1, 0 <= negative_share <= 1"
            )
        if not -1.0 <= self.mean_score <= 1.0:
            raise ValueError(f"rule {self.name!r}: mean_score must lie in [-1, 1]")

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


@dataclass(slots=True)
class RiskUpdate:
    """What one score produced: its rolling-sentiment row (None for a duplicate) and any alerts."""

    row: dict[str, Any] | None = None
    alerts: list[Alert] = field(default_factory=list)


class RiskEngine:
    """Per-ticker windows and rule state for the tickers one worker (or one replay) owns.

    ``trailing`` is the length of the rolling-sentiment row written for every document; each rule
    keeps its own firing state per ticker. ``state()`` and ``restore()`` checkpoint all of it as JSON.
    """

    def __init__(
        self,
        rules: Sequence[NegativeSurgeRule],
        run_id: str = "live",
        lateness: timedelta = timedelta(days=4),
        trailing: timedelta = timedelta(hours=2),
    ) -> None:
        if not rules:
            raise ValueError("a risk engine needs at least one rule")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        self.rules = tuple(rules)
        self.run_id = run_id
        self.lateness = lateness
        self.trailing = trailing
        self.horizon = max([trailing, *(r.window for r in self.rules)]) + lateness
        self.hops = tuple(dict.fromkeys(r.hop for r in self.rules))
        self.windows: dict[str, TickerWindow] = {}
        self.firing: dict[tuple[str, str], Alert] = {}
        self.last_fired: dict[tuple[str, str], datetime] = {}

    def process(self, score: Scored, ticker: str | None = None) -> RiskUpdate:
        """Take one scored mention of ``ticker`` (default: the score's own ticker)."""
        ticker = ticker or score.ticker
        if ticker is None:
            return RiskUpdate()
        window = self.windows.get(ticker)
        if window is None:
            window = TickerWindow(ticker, self.horizon, self.hops)
            self.windows[ticker] = window
        story = score.story_id
        event = Event(
            score.published_at,
            score.document_id,
            score.score,
            score.label == "negative",
            story if story and story != score.document_id else "",
        )
        if not window.add(event):
            return RiskUpdate()
        trailing = window.stats_at(score.published_at, self.trailing)
        row = {
            "run_id": self.run_id, "ticker": ticker, "document_id": score.document_id,
            "published_at": score.published_at, "score": score.score,
            "window_documents": trailing.documents, "window_mean_score": trailing.mean_score,
            "window_negative_share": trailing.negative_share,
        }  # fmt: skip
        alerts: list[Alert] = []
        for rule in self.rules:
            alerts.extend(self._evaluate(rule, window, score.published_at))
        return RiskUpdate(row=row, alerts=alerts)

    def _evaluate(self, rule: NegativeSurgeRule, window: TickerWindow, t: datetime) -> list[Alert]:
        """Rule state after a document at ``t``: resolve, then fire, per aligned window."""
        key = (rule.name, window.ticker)
        if key not in self.firing:
            # every aligned window holding t lies in [t - window, floor(t, hop) + window): with
            # too few documents there, none can hold and nothing can change
            newest = EPOCH + ((t - EPOCH) // rule.hop) * rule.hop
            if window.count_between(t - rule.window, newest + rule.window) < rule.min_documents:
                return []
        # only windows with enough documents can hold, which is all firing and resolving look at
        windows = window.aligned_windows(t, rule.window, rule.hop, rule.min_documents)
        alerts = self._resolve(rule, key, windows, window, t)
        for stats in windows:
            if rule.holds(stats) and self._may_fire(rule, key, stats.start):
                alert = self._alert(rule, stats, window.evidence(stats.start, stats.end))
                self.firing[key] = alert
                self.last_fired[key] = stats.start
                alerts.append(alert)
        return alerts

    def _may_fire(self, rule: NegativeSurgeRule, key: tuple[str, str], start: datetime) -> bool:
        """Not while the ticker is firing, nor for a window overlapping the last one that fired."""
        if key in self.firing:
            return False
        last = self.last_fired.get(key)
        return last is None or abs(start - last) >= rule.window

    def _resolve(
        self,
        rule: NegativeSurgeRule,
        key: tuple[str, str],
        windows: list[WindowStats],
        window: TickerWindow,
        t: datetime,
    ) -> list[Alert]:
        """A firing alert resolves at the first document after its window whose windows are calm."""
        active = self.firing.get(key)
        if active is None or t < active.window_end:
            return []
        if any(rule.holds(stats) for stats in windows):
            return []
        del self.firing[key]
        current = window.stats_at(t, rule.window)
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

    def _alert(
        self, rule: NegativeSurgeRule, stats: WindowStats, evidence: tuple[str, ...]
    ) -> Alert:
        values = {
            "documents": float(stats.documents),
            "negative_share": round(stats.negative_share, 4),
            "mean_score": round(stats.mean_score, 4),
        }
        minutes = int(rule.window.total_seconds() // 60)
        return Alert(
            id=stable_id(rule.name, stats.ticker, self.run_id, stats.start.isoformat()),
            run_id=self.run_id,
            rule=rule.name,
            ticker=stats.ticker,
            severity=rule.severity(stats),
            state=AlertState.FIRING,
            window_start=stats.start,
            window_end=stats.end,
            event_time=stats.end,
            values=values,
            thresholds=rule.thresholds(),
            evidence=evidence,
            explanation=(
                f"{stats.ticker}: {stats.documents} documents in {minutes} min, "
                f"{stats.negative_share:.0%} negative (threshold {rule.negative_share:.0%}), "
                f"mean score {stats.mean_score:+.2f} (threshold {rule.mean_score:+.2f})"
            ),
        )

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, as JSON-compatible data, for a checkpoint."""
        return {
            "windows": {t: w.state() for t, w in self.windows.items()},
            "firing": [json.loads(a.to_json()) for a in self.firing.values()],
            "last_fired": [[r, t, s.isoformat()] for (r, t), s in self.last_fired.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint taken with ``state()`` by an engine with the same rules."""
        for ticker, events in state["windows"].items():
            window = TickerWindow(ticker, self.horizon, self.hops)
            window.restore(events)
            self.windows[ticker] = window
        for data in state["firing"]:
            alert = Alert.from_json(json.dumps(data))
            self.firing[(alert.rule, alert.ticker)] = alert
        for rule, ticker, start in state["last_fired"]:
            self.last_fired[(rule, ticker)] = datetime.fromisoformat(start)

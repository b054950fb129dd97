"""Per-group rolling aggregates in event time, and the warning rules evaluated on them.

A *group* is what state and alerts are kept per: a ticker (``AAPL``), a sector (``sector:Energy``)
or the whole market (``market``); see ``group_key``. Everything is driven by the documents' own
``published_at``; nothing reads the clock.

Each group keeps its recent events (sorted, duplicates and story copies ignored) and, per bucket
length, the sums of aligned buckets: document count, score sum, negatives, sum of squared scores
and disagreement sum. From those:

* **aggregates**: tumbling windows per configured length (15 min, 1 h, 1 day by default) with count,
  mean signed score, negative share, dispersion, mean disagreement, and z-scores of sentiment and of
  volume against the group's own baseline (the windows of the same length in the preceding
  ``baseline`` period);
* **rules** (``Rule``): a negative surge on hopping windows, z-score, volume-spike, sustained-drift
  and disagreement rules on tumbling windows. Each has severity levels, a cooldown, a family (for
  inhibition) and a group kind, and its alerts go firing -> resolved.

Events are expected in event-time order per group (the live stream releases them so, through a
reorder buffer; a replay reads them so). Out-of-order events within ``lateness`` still update the
windows they belong to; older ones are not counted, and ``process`` says so (``RiskUpdate.late``).
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, NamedTuple, Protocol

from riskwire.records import (
    GROUP_KINDS,
    Alert,
    AlertState,
    Severity,
    group_kind,
    stable_id,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMPTY = (0, 0.0, 0.0, 0.0, 0.0)  # a bucket no document fell in
_US = timedelta(microseconds=1)
# Trailing windows are summed from prefix sums of integers counting 1/FIXED: exact, so a window's
# figures do not depend on the order events came in, nor on whether its group was rebuilt from
# storage (the crash tests compare runs bit for bit). A score of magnitude 1/256 or more is held
# exactly; a smaller one moves by at most 1/FIXED/2 (4e-19), so the figures are as exact as floats.
FIXED = 2**60


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
    @property
    def disagreement(self) -> float: ...


class Event(NamedTuple):
    """One document in a group's window; a tuple, so sorting and bisecting run in C. ``story`` is
    the story it belongs to (empty when it is the first or stands alone)."""

    published_at: datetime
    document_id: str
    score: float = 0.0
    negative: bool = False
    story: str = ""
    disagreement: float = 0.0

    @property
    def key(self) -> str:
        """What counts once in a window: the story (copies of it are not independent evidence)."""
        return self.story or self.document_id


class WindowStats(NamedTuple):
    ticker: str  # the group key
    start: datetime
    end: datetime
    documents: int
    mean_score: float
    negative_share: float
    dispersion: float = 0.0
    disagreement: float = 0.0
    sentiment_z: float | None = None
    volume_z: float | None = None

    def metric(self, name: str) -> float | None:
        return float(self.documents) if name == "documents" else getattr(self, name)


def _stats(ticker: str, start: datetime, end: datetime, cell: Sequence[float]) -> WindowStats:
    n = int(cell[0])
    if not n:
        return WindowStats(ticker, start, end, 0, 0.0, 0.0)
    mean = cell[1] / n
    variance = max(cell[3] / n - mean * mean, 0.0)
    return WindowStats(ticker, start, end, n, mean, cell[2] / n, math.sqrt(variance), cell[4] / n)


class Baseline(NamedTuple):
    """A group's history for one window length: volume and sentiment of the preceding windows."""

    windows: int  # how many windows the baseline spans
    active: int  # how many of them held documents
    volume_mean: float
    volume_std: float
    sentiment_mean: float
    sentiment_std: float


MIN_BASELINE_WINDOWS = 5  # windows with documents a z-score needs behind it
VOLUME_STD_FLOOR = 1.0  # documents: one more document than usual is never a 5-sigma event
SENTIMENT_STD_FLOOR = 0.05


def z_scores(cell: Sequence[float], base: Baseline | None) -> tuple[float | None, float | None]:
    """(sentiment z, volume z) of a window's sums against a baseline; None where not defined."""
    if base is None or base.active < MIN_BASELINE_WINDOWS or not cell[0]:
        return None, None
    mean = cell[1] / cell[0]
    sentiment = (mean - base.sentiment_mean) / max(base.sentiment_std, SENTIMENT_STD_FLOOR)
    volume = (cell[0] - base.volume_mean) / max(base.volume_std, VOLUME_STD_FLOOR)
    return round(sentiment, 6), round(volume, 6)


SENTIMENT_SCALE = 1 << 40  # a window's mean score in a baseline, as an integer of this many parts


class _BaselineSums:
    """Running sums over a baseline's windows, all integers, so adding and removing windows in
    any order gives exactly what summing them afresh gives: a baseline is the same however the
    windows that ask for it are batched (live, after a restart, or in a replay)."""

    __slots__ = ("active", "documents", "mean_squares", "means", "squares")

    def __init__(self) -> None:
        self.documents = self.squares = self.active = self.means = self.mean_squares = 0

    def add(self, cell: Sequence[float], sign: int = 1) -> None:
        n = int(cell[0])
        if not n:
            return
        mean = round(cell[1] / n * SENTIMENT_SCALE)
        self.documents += sign * n
        self.squares += sign * n * n
        self.active += sign
        self.means += sign * mean
        self.mean_squares += sign * mean * mean

    def add_buckets(
        self, get: Callable[[int], list[float] | None], lo: int, hi: int, sign: int = 1
    ) -> None:
        """Add (or with ``sign`` -1, remove) the buckets numbered ``lo`` to ``hi - 1`` that hold
        documents; ``get`` looks one up."""
        for k in range(lo, hi):
            cell = get(k)
            if cell is not None:
                self.add(cell, sign)

    def baseline(self, span: int) -> Baseline:
        volume_mean = self.documents / span
        volume_std = math.sqrt(max(self.squares / span - volume_mean * volume_mean, 0.0))
        a = self.active
        if not a:
            return Baseline(span, 0, volume_mean, volume_std, 0.0, 0.0)
        # exact to the last step: a * mean_squares >= means ** 2, so the variance is never negative
        variance = (a * self.mean_squares - self.means * self.means) / (a * a * SENTIMENT_SCALE**2)
        return Baseline(
            span, a, volume_mean, volume_std, self.means / (a * SENTIMENT_SCALE),
            math.sqrt(variance),
        )  # fmt: skip


class TickerWindow:
    """The recent events of one group, kept sorted by event time; duplicates are ignored.

    Events older than ``horizon`` before the newest one are evicted: ``horizon`` is the longest
    window anything looks back over plus the allowed lateness. Bucket sums are kept ``keep`` back
    (the horizon plus the baseline period).

    Eviction moves a start index (``_lo``) and drops the evicted entries from the lists only once
    they are half of them: a busy group (the market, with four days of lateness: tens of thousands
    of events) evicts about one event per event, and deleting from the head of the lists every time
    moved all of them (an O(n) cost per document). Everything reads from ``_lo`` on.
    """

    def __init__(
        self,
        ticker: str,
        horizon: timedelta,
        hops: Sequence[timedelta] = (),
        keep: timedelta | None = None,
    ) -> None:
        self.ticker = ticker
        self.horizon = horizon
        self.keep = max(keep or 2 * horizon, horizon)
        self._events: list[Event] = []
        self._lo = 0  # events[:_lo] are evicted, not yet deleted
        self._ids: set[str] = set()
        # prefix sums over ``events``, entry i summing the events before index i (less any evicted:
        # only differences are read): scores in 1/FIXED, negatives, squared scores in 1/FIXED**2,
        # disagreement in 1/FIXED
        self._prefix: tuple[list[int], list[int], list[int], list[int]] = ([0], [0], [0], [0])
        self.high_water: datetime | None = None
        # per bucket length: [documents, score sum, negatives, squared scores, disagreement] per
        # aligned bucket, so an aligned window costs a few additions instead of a scan; updated on
        # add, so arrival order does not matter (keyed by the bucket's number since the epoch:
        # integers hash far faster than datetimes)
        self.buckets: dict[timedelta, dict[int, list[float]]] = {h: {} for h in hops}
        self.baselines: dict[tuple[timedelta, int], Baseline] = {}
        # per bucket length, the running sums of the last baseline built: (window index, sums of
        # the buckets in [index - span, index)), moved forward bucket by bucket to the next one
        self._sweeps: dict[timedelta, tuple[int, _BaselineSums]] = {}
        self._adds = 0

    def add(self, event: Event) -> bool:
        """Take an event; False for a duplicate, or a copy of a story already in the window."""
        ident = event.key
        if ident in self._ids:
            return False
        t = event.published_at
        if self.high_water is None or t > self.high_water:
            self.high_water = t
        oldest = self.high_water - self.horizon
        if t < oldest:  # evicted at once: neither kept nor counted
            return True
        at = bisect.bisect_right(self._events, event, self._lo)
        self._events.insert(at, event)
        self._prefix_insert(at, event)
        self._ids.add(ident)
        self._evict(oldest)
        self._count(event)
        return True

    @property
    def events(self) -> list[Event]:
        """The events in the window, oldest first (a copy)."""
        return self._events[self._lo :]

    def _count(self, event: Event) -> None:
        t = event.published_at
        score = event.score
        since = t - EPOCH
        for hop, buckets in self.buckets.items():
            key = since // hop
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [1, score, float(event.negative), score * score, event.disagreement]
            else:
                bucket[0] += 1
                bucket[1] += score
                bucket[2] += event.negative
                bucket[3] += score * score
                bucket[4] += event.disagreement
        if self.high_water is not None and t < self.high_water:
            self._forget_baselines()  # a late event changed history some baseline was built from
        self._adds += 1
        if self._adds % 512 == 0:  # buckets no window can reach again
            assert self.high_water is not None
            oldest = self.high_water - self.keep - self.horizon
            for hop, buckets in self.buckets.items():
                first = (oldest - EPOCH) // hop
                for key in [k for k in buckets if k < first]:
                    del buckets[key]
                sweep = self._sweeps.get(hop)
                if sweep is not None and sweep[0] - (self.keep - self.horizon) // hop < first:
                    del self._sweeps[hop]  # its sums held buckets just deleted
            self.baselines.clear()  # (a bound on the cache)

    def _forget_baselines(self) -> None:
        if self.baselines:
            self.baselines.clear()
        if self._sweeps:
            self._sweeps.clear()

    def _evict(self, oldest: datetime) -> None:
        events, lo = self._events, self._lo
        if events[lo].published_at >= oldest:  # nothing to evict
            return
        cut = bisect.bisect_left(events, (oldest,), lo)
        for old in events[lo:cut]:
            self._ids.discard(old.key)
        self._lo = cut
        if cut >= 64 and 2 * cut >= len(events):  # deleted in bulk: amortised O(1) an event
            del events[:cut]
            for prefix in self._prefix:
                del prefix[:cut]
            self._lo = 0

    def _prefix_insert(self, at: int, event: Event) -> None:
        """Keep the prefix sums in step with ``events.insert(at, event)``: an append costs four
        additions; an event inserted before others (out of order) shifts the sums after it."""
        score = round(event.score * FIXED)
        values = (score, int(event.negative), score * score, round(event.disagreement * FIXED))
        scores, negatives, squares, disputed = self._prefix
        if at == len(scores) - 1:  # the common case, in event-time order: appended
            scores.append(scores[-1] + score)
            negatives.append(negatives[-1] + values[1])
            squares.append(squares[-1] + values[2])
            disputed.append(disputed[-1] + values[3])
            return
        for prefix, value in zip(self._prefix, values, strict=True):
            prefix.insert(at + 1, prefix[at] + value)
            if value:
                prefix[at + 2 :] = [x + value for x in prefix[at + 2 :]]

    def _rebuild_prefix(self) -> None:
        self._prefix = ([0], [0], [0], [0])
        for at, event in enumerate(self._events):
            self._prefix_insert(at, event)

    def stats_at(self, end: datetime, length: timedelta) -> WindowStats:
        """Statistics over the events in ``(end - length, end]``."""
        events = self._events
        start = end - length
        lo = bisect.bisect_right(events, (start, "\uffff"), self._lo)
        hi = bisect.bisect_right(events, (end, "\uffff"), lo)
        return self._stats(lo, hi, start, end)

    def count_between(self, start: datetime, end: datetime) -> int:
        """How many events lie in ``[start, end)``."""
        events, lo = self._events, self._lo
        return bisect.bisect_left(events, (end,), lo) - bisect.bisect_left(events, (start,), lo)

    def stats_between(self, start: datetime, end: datetime) -> WindowStats:
        """Statistics over the events in ``[start, end)``."""
        return self._stats(*self._span(start, end), start, end)

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
        counts = [c[0] for c in cells]
        for j in range(k):  # (this runs per document)
            if sum(counts[j : j + k]) >= at_least:  # else the window needs no sums
                total: Sequence[float] = cells[j]
                if k > 1:  # one pass over the window's cells
                    n = s = neg = sq = dis = 0.0
                    for c in cells[j : j + k]:
                        n += c[0]
                        s += c[1]
                        neg += c[2]
                        sq += c[3]
                        dis += c[4]
                    total = (n, s, neg, sq, dis)
                out.append(_stats(ticker, start, start + length, total))
            start += hop
        return out

    def tumbling(self, length: timedelta, index: int, with_z: bool = True) -> WindowStats:
        """The window ``index`` of length ``length`` (a registered bucket length), with z-scores
        against the baseline of the ``windows`` before it when ``with_z``."""
        cell = self.buckets[length].get(index, _EMPTY)
        start = EPOCH + index * length
        stats = _stats(self.ticker, start, start + length, cell)
        if not with_z:
            return stats
        sentiment, volume = z_scores(cell, self.baseline(length, index))
        return stats._replace(sentiment_z=sentiment, volume_z=volume)

    def baseline(self, length: timedelta, index: int) -> Baseline | None:
        """Volume and sentiment of the windows of ``length`` in the ``keep - horizon`` before
        window ``index`` (cached once that history is settled: see ``prepare_baselines``)."""
        cached = self.baselines.get((length, index))
        if cached is None:
            return self.prepare_baselines(length, (index,)).get(index)
        return cached

    def prepare_baselines(self, length: timedelta, indices: Sequence[int]) -> dict[int, Baseline]:
        """The baselines of windows of ``length``, each from the last one's sums plus the buckets
        that entered its history, less those that left (exact integer sums, so the same as summing
        each window's history afresh). They are cached, and the sums carry over to the next call,
        where their history is complete: with events in event-time order, the buckets before the
        newest event's no longer change, and the windows asked for move forward, so a baseline
        costs the buckets passed since the last one, not the whole baseline period's."""
        span = (self.keep - self.horizon) // length
        todo = sorted({i for i in indices if (length, i) not in self.baselines})
        if span < 1 or not todo or self.high_water is None:
            return {}
        settled = (self.high_water - EPOCH) // length  # windows up to it have a settled history
        buckets = self.buckets[length]
        get = buckets.get
        at, sums = self._sweeps.get(length) or (0, None)
        out = {}
        for index in todo:
            if sums is None or index < at or index - at >= span:  # nothing to carry: afresh
                at, sums = index, _BaselineSums()
                lo = index - span
                if len(buckets) < span:  # fewer buckets than the history has windows
                    for k, cell in buckets.items():
                        if lo <= k < index:
                            sums.add(cell)
                else:
                    sums.add_buckets(get, lo, index)
            else:
                sums.add_buckets(get, at, index)  # entering the history
                sums.add_buckets(get, at - span, index - span, -1)  # leaving it
                at = index
            out[index] = base = sums.baseline(span)
            if index <= settled:
                self.baselines[(length, index)] = base
        if sums is not None and at <= settled:  # (todo is not empty: sums is set)
            self._sweeps[length] = (at, sums)
        else:
            self._sweeps.pop(length, None)
        return out

    def evidence(self, start: datetime, end: datetime, limit: int = 5) -> tuple[str, ...]:
        """The documents that weigh most in ``[start, end)``: the most negative first, then (for
        windows with few negatives) the most disputed."""
        inside = self._between(start, end)
        negatives = [e for e in inside if e.negative]
        worst = heapq.nsmallest(limit, negatives, key=lambda e: (e.score, e.document_id))
        if len(worst) < limit:
            rest = [e for e in inside if not e.negative]
            worst += heapq.nsmallest(
                limit - len(worst), rest, key=lambda e: (-e.disagreement, e.score, e.document_id)
            )
        return tuple(e.document_id for e in worst)

    def _span(self, start: datetime, end: datetime) -> tuple[int, int]:
        """The index range of the events in ``[start, end)``."""
        lo = bisect.bisect_left(self._events, Event(start, ""), self._lo)
        return lo, bisect.bisect_left(self._events, Event(end, ""), lo)

    def _between(self, start: datetime, end: datetime) -> list[Event]:
        lo, hi = self._span(start, end)
        return self._events[lo:hi]

    def _stats(self, lo: int, hi: int, start: datetime, end: datetime) -> WindowStats:
        """Statistics of ``events[lo:hi]``, from the prefix sums (this runs for every document,
        over its trailing window: a few subtractions, however many events the window holds)."""
        n = hi - lo
        if not n:
            return WindowStats(self.ticker, start, end, 0, 0.0, 0.0)
        scores, negs, sqs, dis = self._prefix
        total, negatives = scores[hi] - scores[lo], negs[hi] - negs[lo]
        squares, disputed = sqs[hi] - sqs[lo], dis[hi] - dis[lo]
        # exact integers to the last step: n * squares >= total ** 2, so the variance is never
        # negative, and it is exactly 0 when every score is the same
        variance = (n * squares - total * total) / (n * n * FIXED * FIXED)
        return WindowStats(self.ticker, start, end, n, total / (n * FIXED), negatives / n,
                           math.sqrt(variance), disputed / (n * FIXED))  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {
            "events": [
                [
                    e.published_at.isoformat(),
                    e.document_id,
                    e.score,
                    e.negative,
                    e.story,
                    e.disagreement,
                ]
                for e in self._events[self._lo :]
            ],
            "buckets": {
                str(int(hop.total_seconds())): [[k, *cell] for k, cell in buckets.items()]
                for hop, buckets in self.buckets.items()
            },
        }

    def restore(self, state: dict[str, Any] | list[list[Any]]) -> None:
        """From ``state()``; or from the plain event list of older checkpoints (buckets rebuilt)."""
        if isinstance(state, list):
            for published_at, document_id, score, negative, *rest in state:
                self.add(Event(datetime.fromisoformat(published_at), document_id, score, negative,
                               rest[0] if rest else ""))  # fmt: skip
            return
        for seconds, cells in state["buckets"].items():
            hop = timedelta(seconds=int(seconds))
            if hop in self.buckets:
                self.buckets[hop] = {int(k): list(cell) for k, *cell in cells}
        for published_at, document_id, score, negative, story, disagreement in state["events"]:
            event = Event(
                datetime.fromisoformat(published_at), document_id, score, negative, story,
                disagreement,
            )  # fmt: skip
            self._events.append(event)
            self._ids.add(event.key)
            if self.high_water is None or event.published_at > self.high_water:
                self.high_water = event.published_at
        self._events.sort()
        self._lo = 0
        self._rebuild_prefix()

    def replay(self, events: Iterable[Event]) -> None:
        """Rebuild from stored events in event-time order: buckets and all, as when they came."""
        for event in sorted(events):
            self.add(event)


def window_starts(t: datetime, length: timedelta, hop: timedelta) -> list[datetime]:
    """Starts of the aligned windows ``[s, s + length)`` that contain ``t``, oldest first."""
    newest = EPOCH + ((t - EPOCH) // hop) * hop
    count = -(-length // hop)  # ceil
    starts = [newest - i * hop for i in range(count)]
    return [s for s in reversed(starts) if s <= t < s + length]


# Rule conditions: a metric of a window and the side of the threshold that holds.
AT_LEAST = {"documents", "negative_share", "volume_z", "disagreement", "dispersion"}
AT_MOST = {"mean_score", "sentiment_z"}
METRICS = AT_LEAST | AT_MOST
Z_METRICS = {"sentiment_z", "volume_z"}
RULE_TYPES: dict[str, dict[str, float]] = {
    # the conditions each type needs, with their defaults
    "negative_surge": {"documents": 4, "negative_share": 0.6, "mean_score": -0.25},
    "sentiment_z": {"documents": 3, "sentiment_z": -3.0},
    "volume_spike": {"documents": 5, "volume_z": 4.0},
    "drift": {"documents": 3, "mean_score": -0.15},
    "disagreement": {"documents": 5, "disagreement": 0.45},
}
SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def _describe(name: str, value: float | None, bound: float) -> str:
    side = ">=" if name in AT_LEAST else "<="
    if name == "negative_share":
        shown = "n/a" if value is None else f"{value:.0%}"
        return f"{shown} negative (threshold {side} {bound:.0%})"
    shown = "n/a" if value is None else f"{value:+.2f}"
    return f"{name} {shown} (threshold {side} {bound:+.2f})"


@dataclass(frozen=True)
class Rule:
    """A warning rule: conditions on a window's metrics, all of which must hold.

    ``negative_surge`` looks at hopping windows (``window`` long, a new one every ``hop``); the other
    types at tumbling windows (``hop == window``), where z-scores against the group's baseline are
    defined. ``drift`` needs its conditions to hold in ``consecutive`` windows in a row.
    ``critical`` are stricter bounds that raise the severity to critical; ``cooldown`` is how far
    apart (in event time) two firings of the rule for one group must start; ``family`` groups
    rules for inhibition (a market or sector alert of a family silences single-name alerts of it).
    """

    name: str
    type: str = "negative_surge"
    window: timedelta = timedelta(hours=2)
    hop: timedelta | None = None
    group: str = "ticker"
    conditions: tuple[tuple[str, float], ...] = ()
    critical: tuple[tuple[str, float], ...] | None = None  # None: the type's default
    severity: Severity = Severity.WARNING
    cooldown: timedelta | None = None
    family: str | None = None
    consecutive: int = 1

    def __post_init__(self) -> None:
        at = f"rule {self.name!r}"
        if self.type not in RULE_TYPES:
            raise ValueError(f"{at}: unknown type {self.type!r}; known: {sorted(RULE_TYPES)}")
        if self.group not in GROUP_KINDS:
            raise ValueError(f"{at}: group must be one of {GROUP_KINDS}, got {self.group!r}")
        hop = self.hop if self.hop is not None else self.window
        if self.type != "negative_surge":
            hop = self.window  # tumbling
        object.__setattr__(self, "hop", hop)
        if self.window <= timedelta(0) or hop <= timedelta(0) or hop > self.window:
            raise ValueError(f"{at}: need 0 < hop <= window")
        conditions = {**RULE_TYPES[self.type], **dict(self.conditions)}
        object.__setattr__(self, "conditions", tuple(sorted(conditions.items())))
        if self.critical is None:
            default: tuple[tuple[str, float], ...] = ()
            if self.type == "negative_surge":  # twice the documents, 80% negative
                default = (("documents", 2 * conditions["documents"]), ("negative_share", 0.8))
            object.__setattr__(self, "critical", default)
        for name, bound in (*self.conditions, *self.strict):
            if name not in METRICS:
                raise ValueError(f"{at}: unknown metric {name!r}; known: {sorted(METRICS)}")
            if name in Z_METRICS and hop != self.window:
                raise ValueError(f"{at}: z-scores are defined on tumbling windows (hop = window)")
            if name in {"negative_share", "disagreement"} and not 0.0 <= bound <= 1.0:
                raise ValueError(f"{at}: need 0 <= {name} <= 1")
            if name == "mean_score" and not -1.0 <= bound <= 1.0:
                raise ValueError(f"{at}: need -1 <= mean_score <= 1")
        if self.min_documents < 1:
            raise ValueError(f"{at}: need min_documents >= 1")
        if self.consecutive < 1 or (self.consecutive > 1 and self.type != "drift"):
            raise ValueError(f"{at}: consecutive >= 1, and only drift rules look at several")
        if self.cooldown is not None and self.cooldown < timedelta(0):
            raise ValueError(f"{at}: cooldown must not be negative")

    @cached_property
    def strict(self) -> tuple[tuple[str, float], ...]:
        return self.critical or ()

    @property
    def step(self) -> timedelta:
        assert self.hop is not None
        return self.hop

    @cached_property
    def min_documents(self) -> int:
        return int(dict(self.conditions)["documents"])

    @cached_property
    def negative_share(self) -> float | None:
        return dict(self.conditions).get("negative_share")

    @cached_property
    def mean_score(self) -> float | None:
        return dict(self.conditions).get("mean_score")

    @cached_property
    def tumbling(self) -> bool:
        return self.step == self.window

    @cached_property
    def needs_z(self) -> bool:
        return any(n in Z_METRICS for n, _ in (*self.conditions, *self.strict))

    @cached_property
    def span(self) -> timedelta:
        """How far back the rule looks."""
        return self.window * self.consecutive

    @cached_property
    def family_name(self) -> str:
        return self.family or self.type

    @cached_property
    def quiet_period(self) -> timedelta:
        return self.cooldown if self.cooldown is not None else self.window

    def holds(self, stats: WindowStats, bounds: Iterable[tuple[str, float]] | None = None) -> bool:
        for name, bound in self.conditions if bounds is None else bounds:
            value = stats.metric(name)
            if value is None:
                return False
            if (value < bound) if name in AT_LEAST else (value > bound):
                return False
        return True

    def severity_of(self, windows: Sequence[WindowStats]) -> Severity:
        if self.strict:
            strict = {**dict(self.conditions), **dict(self.strict)}
            if all(self.holds(w, strict.items()) for w in windows):
                return Severity.CRITICAL
        return self.severity

    def thresholds(self) -> dict[str, float]:
        out = {("min_documents" if n == "documents" else n): float(v) for n, v in self.conditions}
        out["window_minutes"] = self.window.total_seconds() / 60
        if self.consecutive > 1:
            out["consecutive"] = float(self.consecutive)
        for name, bound in self.strict:
            out[f"critical_{name}"] = float(bound)
        return out

    def explain(self, windows: Sequence[WindowStats]) -> str:
        w = windows[-1]
        minutes = int(self.window.total_seconds() // 60)
        span = (
            f"{self.consecutive} consecutive {minutes}-min windows"
            if self.consecutive > 1 else f"{minutes} min"
        )  # fmt: skip
        parts = [_describe(n, w.metric(n), b) for n, b in self.conditions if n != "documents"]
        head = (
            f"{w.ticker}: {self.type.replace('_', ' ')} over {span}: {w.documents} documents, "
            f"{w.negative_share:.0%} negative, mean score {w.mean_score:+.2f}"
        )
        return head + "; " + ", ".join(parts)


def NegativeSurgeRule(
    window: timedelta = timedelta(hours=2),
    hop: timedelta = timedelta(minutes=30),
    min_documents: int = 4,
    negative_share: float = 0.6,
    mean_score: float = -0.25,
    name: str = "negative_surge",
) -> Rule:
    """The negative-surge rule: enough documents in a window, mostly and strongly negative;
    critical with twice the documents and 80% negative."""
    return Rule(
        name=name, type="negative_surge", window=window, hop=hop,
        conditions=(("documents", min_documents), ("negative_share", negative_share),
                    ("mean_score", mean_score)),
    )  # fmt: skip


@dataclass(slots=True)
class RiskUpdate:
    """What one score produced: its rolling-sentiment row (None for a duplicate), any alerts, and
    whether it came later than the allowed lateness (stored, but not counted in the windows)."""

    row: dict[str, Any] | None = None
    alerts: list[Alert] = field(default_factory=list)
    late: bool = False


DEFAULT_AGGREGATES = (timedelta(minutes=15), timedelta(hours=1), timedelta(days=1))


class RiskEngine:
    """Per-group windows, aggregates and rule state for the groups one worker (or replay) owns.

    ``trailing`` is the length of the rolling-sentiment row written for every document;
    ``aggregates`` the tumbling window lengths whose rows ``drain_aggregates`` returns, with
    z-scores against ``baseline``. Each rule keeps its own firing state per group.
    ``state()`` and ``restore()`` checkpoint all of it as JSON.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        run_id: str = "live",
        lateness: timedelta = timedelta(days=4),
        trailing: timedelta = timedelta(hours=2),
        aggregates: Sequence[timedelta] = DEFAULT_AGGREGATES,
        baseline: timedelta = timedelta(days=20),
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
        self.aggregates = tuple(aggregates)
        self.baseline = baseline
        self.horizon = max([trailing, *(r.span for r in self.rules)]) + lateness
        self.hops = tuple(dict.fromkeys([*(r.step for r in self.rules), *self.aggregates]))
        self.by_kind = {k: tuple(r for r in self.rules if r.group == k) for k in GROUP_KINDS}
        self._rules_of: dict[str, tuple[Rule, ...]] = {}  # per group key, from its kind
        self.windows: dict[str, TickerWindow] = {}
        self.firing: dict[tuple[str, str], Alert] = {}
        self.last_fired: dict[tuple[str, str], datetime] = {}
        # groups and stretches of event time (of ``grain``, which every aggregate length is a
        # multiple of) whose aggregate windows changed since the last drain
        self.grain = timedelta(microseconds=math.gcd(*(a // _US for a in self.aggregates)) or 1)
        self.touched: set[tuple[str, int]] = set()
        self.late = 0  # documents later than the allowed lateness
        self.out_of_order = 0  # documents older than their group's newest when they came

    def window_of(self, key: str) -> TickerWindow:
        window = self.windows.get(key)
        if window is None:
            window = TickerWindow(key, self.horizon, self.hops, self.horizon + self.baseline)
            self.windows[key] = window
        return window

    def process(self, score: Scored, ticker: str | None = None) -> RiskUpdate:
        """Take one scored mention of group ``ticker`` (default: the score's own ticker)."""
        key = ticker or score.ticker
        if key is None:
            return RiskUpdate()
        window = self.window_of(key)
        story = score.story_id
        t = score.published_at
        event = Event(
            t, score.document_id, score.score, score.label == "negative",
            story if story and story != score.document_id else "",
            getattr(score, "disagreement", 0.0),
        )  # fmt: skip
        behind = window.high_water is not None and t < window.high_water
        if not window.add(event):
            return RiskUpdate()
        assert window.high_water is not None
        self.out_of_order += behind
        late = t < window.high_water - self.horizon
        since = t - EPOCH
        if late:
            self.late += 1
        else:
            self.touched.add((key, since // self.grain))
        trailing = window.stats_at(t, self.trailing)
        row = {
            "run_id": self.run_id, "ticker": key, "document_id": score.document_id,
            "published_at": t, "score": score.score, "label": score.label,
            "disagreement": event.disagreement, "story_id": event.story or None,
            "window_documents": trailing.documents, "window_mean_score": trailing.mean_score,
            "window_negative_share": trailing.negative_share,
        }  # fmt: skip
        if late:
            return RiskUpdate(row=row, late=True)
        alerts: list[Alert] = []
        rules = self._rules_of.get(key)
        if rules is None:
            rules = self._rules_of[key] = self.by_kind[group_kind(key)]
        for rule in rules:
            fired = self._evaluate(rule, window, t, since)
            if fired:
                alerts += fired
        return RiskUpdate(row=row, alerts=alerts)

    def drain_aggregates(self) -> list[dict[str, Any]]:
        """Rows of every aggregate window changed since the last call (latest values)."""
        rows = []
        touched: dict[tuple[str, timedelta], set[int]] = {}
        grain = self.grain
        for key, index in self.touched:
            at = grain * index
            for length in self.aggregates:
                touched.setdefault((key, length), set()).add(at // length)
        for key, length in sorted(touched):
            window = self.windows.get(key)
            if window is None:
                continue
            indices = sorted(touched[(key, length)])
            window.prepare_baselines(length, indices)
            for index in indices:
                s = window.tumbling(length, index)
                rows.append({
                    "run_id": self.run_id, "ticker": key, "group_kind": group_kind(key),
                    "window_minutes": int(length.total_seconds() // 60),
                    "window_start": s.start, "window_end": s.end, "documents": s.documents,
                    "mean_score": s.mean_score, "negative_share": s.negative_share,
                    "dispersion": s.dispersion, "disagreement": s.disagreement,
                    "sentiment_z": s.sentiment_z, "volume_z": s.volume_z,
                })  # fmt: skip
        self.touched.clear()
        return rows

    def _windows(
        self, rule: Rule, window: TickerWindow, t: datetime, since: timedelta
    ) -> list[list[WindowStats]]:
        """The candidate windows a document at ``t`` can change, each as the run of windows the
        rule looks at (one, or ``consecutive`` for drift), and with enough documents."""
        if not rule.tumbling:
            return [
                [w] for w in window.aligned_windows(t, rule.window, rule.step, rule.min_documents)
            ]
        index = since // rule.window
        runs = []
        # a drift run ending at any of the next ``consecutive`` windows includes this one
        for end in range(index, index + rule.consecutive):
            run = [window.tumbling(rule.window, i, rule.needs_z)
                   for i in range(end - rule.consecutive + 1, end + 1)]  # fmt: skip
            if all(w.documents >= rule.min_documents for w in run):
                runs.append(run)
        return runs

    def _evaluate(
        self, rule: Rule, window: TickerWindow, t: datetime, since: timedelta
    ) -> list[Alert]:
        """Rule state after a document at ``t`` (``since`` the epoch): resolve, then fire, per
        candidate window."""
        key = (rule.name, window.ticker)
        if key not in self.firing:  # with too few documents, nothing can fire
            if rule.tumbling:
                # every candidate (every window of a drift's runs) includes t's own window
                cell = window.buckets[rule.window].get(since // rule.window, _EMPTY)
                if cell[0] < rule.min_documents:
                    return []
            else:
                # every aligned window holding t lies in [t - window, floor(t, hop) + window)
                newest = EPOCH + (since // rule.step) * rule.step
                if window.count_between(t - rule.window, newest + rule.window) < rule.min_documents:
                    return []
        runs = self._windows(rule, window, t, since)
        alerts = self._resolve(rule, key, runs, window, t)
        for run in runs:
            if all(rule.holds(w) for w in run) and self._may_fire(rule, key, run[-1].start):
                alert = self._alert(rule, run, window)
                self.firing[key] = alert
                self.last_fired[key] = run[-1].start
                alerts.append(alert)
        return alerts

    def _may_fire(self, rule: Rule, key: tuple[str, str], start: datetime) -> bool:
        """Not while the group is firing, nor within the cooldown of the last window that fired."""
        if key in self.firing:
            return False
        last = self.last_fired.get(key)
        return last is None or abs(start - last) >= rule.quiet_period

    def _resolve(
        self,
        rule: Rule,
        key: tuple[str, str],
        runs: list[list[WindowStats]],
        window: TickerWindow,
        t: datetime,
    ) -> list[Alert]:
        """A firing alert resolves at the first document after its window whose windows are calm."""
        active = self.firing.get(key)
        if active is None or t < active.window_end:
            return []
        if any(all(rule.holds(w) for w in run) for run in runs):
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

    def _alert(self, rule: Rule, run: list[WindowStats], window: TickerWindow) -> Alert:
        stats = run[-1]
        values: dict[str, float] = {
            "documents": float(stats.documents),
            "negative_share": round(stats.negative_share, 4),
            "mean_score": round(stats.mean_score, 4),
            "dispersion": round(stats.dispersion, 4),
            "disagreement": round(stats.disagreement, 4),
        }
        for name in ("sentiment_z", "volume_z"):
            value = stats.metric(name)
            if value is not None:
                values[name] = round(value, 4)
        if len(run) > 1:
            values["worst_mean_score"] = round(max(w.mean_score for w in run), 4)
        start = run[0].start
        return Alert(
            id=stable_id(rule.name, stats.ticker, self.run_id, stats.start.isoformat()),
            run_id=self.run_id,
            rule=rule.name,
            ticker=stats.ticker,
            severity=rule.severity_of(run),
            state=AlertState.FIRING,
            window_start=stats.start,
            window_end=stats.end,
            event_time=stats.end,
            values=values,
            thresholds=rule.thresholds(),
            evidence=window.evidence(start, stats.end),
            explanation=rule.explain(run),
            family=rule.family_name,
        )

    def restore_group(
        self,
        key: str,
        events: Iterable[Event],
        firing: Iterable[Alert] = (),
        last_fired: Mapping[str, datetime] | None = None,
    ) -> None:
        """Rebuild one group from what was stored for it: its events (the last ``baseline`` and
        horizon of them, in any order), its firing alerts and, per rule, the start of the last
        window that fired."""
        window = TickerWindow(key, self.horizon, self.hops, self.horizon + self.baseline)
        window.replay(events)
        self.windows[key] = window
        for alert in firing:
            self.firing[(alert.rule, key)] = alert
        for rule, start in (last_fired or {}).items():
            self.last_fired[(rule, key)] = start

    def forget(self, keys: Iterable[str]) -> None:
        """Drop groups this engine no longer owns (after a rebalance)."""
        gone = set(keys)
        for key in gone:
            self.windows.pop(key, None)
        for state in (self.firing, self.last_fired):
            for k in [k for k in state if k[1] in gone]:
                del state[k]
        self.touched = {t for t in self.touched if t[0] not in gone}

    def state(self) -> dict[str, Any]:
        """Everything the engine knows, as JSON-compatible data, for a checkpoint."""
        return {
            "windows": {t: w.state() for t, w in self.windows.items()},
            "firing": [json.loads(a.to_json()) for a in self.firing.values()],
            "last_fired": [[r, t, s.isoformat()] for (r, t), s in self.last_fired.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint taken with ``state()`` by an engine with the same rules."""
        for ticker, saved in state["windows"].items():
            window = TickerWindow(ticker, self.horizon, self.hops, self.horizon + self.baseline)
            window.restore(saved)
            self.windows[ticker] = window
        for data in state["firing"]:
            alert = Alert.from_json(json.dumps(data))
            self.firing[(alert.rule, alert.ticker)] = alert
        for rule, ticker, start in state["last_fired"]:
            self.last_fired[(rule, ticker)] = datetime.fromisoformat(start)

"""Event-time watermarks from the raw topics to the risk stage, as in-band markers.

The risk stage must see each group's documents in event-time order (streams/risk.py), but with a
backlog the stages upstream interleave their input partitions by hours of event time. So progress
travels with the data, as ``Watermark`` records:

* **normalise** keeps each raw record in its partition number (``docs`` partition q holds raw
  partition q's documents, in order). After each batch it sends a marker into ``docs`` q: all
  documents of raw partition q up to event time T are sent. When raw partition q (news and social)
  is read to its end and quiet for ``reorder_idle_s``, it sends an *idle* marker: do not wait on q.
* **scoring** reads ``docs`` q in order. After each batch it sends, to every partition of
  ``scored`` and ``groups``, a marker for each q it read: the newest event time whose scores it has
  sent, or idle when the last thing it read from q was normalise's idle marker.
* **risk** releases a held score once every ``docs`` partition's marker on its partition has
  passed it (see ``RiskStage.bound``).

Markers are re-sent for every partition a worker owns after each rebalance, because a new owner
downstream starts reading after the last committed offset and may not have seen them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import faust

from riskwire.records import Watermark

MARKER = b'"schema":"watermark/1"'


def is_marker(value: bytes) -> bool:
    return MARKER in value


# a high water is taken as the broker's word on a partition's end for this long at least (fetches
# of a partition at its end are answered every fetch wait, 100 ms by default)
FRESH_S = 1.0
MIN_INTERVAL_S = 0.25  # markers per source partition at most this often (idle ones at once)


@dataclass
class Sealed:
    """What one batch saw, fixed when it was taken: per partition, the newest event time read
    up to and in it, and the partitions whose last word in it was upstream's idle marker."""

    newest: dict[int, datetime]
    idle_seen: set[int]
    qs: set[int]


class Marks:
    """Per source partition q: the newest event time seen, the newest whose records are all sent
    on (what markers say), and whether q is idle.

    What a batch in flight saw becomes what markers say only when the batch is done (``send``):
    a marker that goes out meanwhile (``resend`` after a rebalance, ``flush`` of a held-back one,
    an idle marker from a timer) says only what was true before the batch, or the risk stage
    would release other partitions' scores past the batch's and get the batch out of order.

    Several batches may be in flight, each scored while the one before it is written: each is
    ``seal``-ed when taken and sent with ``send_sealed``, in the order taken. A batch that saw
    upstream's idle marker for q makes q idle only if no later batch has read from q.

    Markers are throttled: a partition's marker goes out at most every ``MIN_INTERVAL_S``; one held
    back is sent by ``flush`` (a timer), with what was done by then."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.newest: dict[int, datetime] = {}
        self.done: dict[int, datetime] = {}
        self.idle: set[int] = set()
        self.current: set[int] = set()  # partitions the batch being taken has read from
        self.idle_seen: set[int] = set()  # ... whose last word in it was upstream's idle marker
        self.sealed: Counter[int] = Counter()  # per partition: sealed batches not sent yet
        self.last_sent: dict[int, float] = {}
        self.pending: dict[int, tuple[Sequence[faust.TopicT], bool]] = {}

    @property
    def inflight(self) -> set[int]:
        """Partitions that a batch not sent on yet has read from."""
        return self.current | {q for q, n in self.sealed.items() if n > 0}

    def saw(self, q: int, t: datetime | None) -> None:
        """A record (or upstream marker) of q, at event time ``t``, in the batch in flight."""
        self.current.add(q)
        self.idle.discard(q)  # not idle any more: saying so at once is always safe
        self.idle_seen.discard(q)
        if t is not None and (q not in self.newest or t > self.newest[q]):
            self.newest[q] = t

    def saw_idle(self, q: int) -> None:
        """Upstream's idle marker for q, in the batch in flight (after what it read before)."""
        self.current.add(q)
        self.idle_seen.add(q)

    def seal(self, qs: Iterable[int] = ()) -> Sealed:
        """The batch being taken is complete: what it saw, to send once it is done."""
        qs = self.current | set(qs)
        sealed = Sealed({q: self.newest[q] for q in qs if q in self.newest}, self.idle_seen, qs)
        self.sealed.update(qs)
        self.current, self.idle_seen = set(), set()
        return sealed

    def marker(self, q: int) -> bytes:
        return Watermark(
            source_partition=q, event_time=self.done.get(q), idle=q in self.idle
        ).to_json()

    async def send(
        self, qs: Iterable[int], topics: Sequence[faust.TopicT], fan_out: bool, force: bool = False
    ) -> None:
        """After the batch being taken is sent on: ``seal`` and ``send_sealed`` at once."""
        await self.send_sealed(self.seal(qs), topics, fan_out, force)

    async def send_sealed(
        self, batch: Sealed, topics: Sequence[faust.TopicT], fan_out: bool, force: bool = False
    ) -> None:
        """After a batch is sent on: what it saw is done; markers for its partitions, into the same
        partition of each topic or into all of them (now, or by ``flush`` if one went out very
        recently)."""
        now = time.monotonic()
        for q in sorted(batch.qs):
            self.sealed[q] -= 1
            if self.sealed[q] <= 0:
                del self.sealed[q]
            if q in batch.newest and (q not in self.done or batch.newest[q] > self.done[q]):
                self.done[q] = batch.newest[q]
            if q in batch.idle_seen and q not in self.inflight:
                self.idle.add(q)
            if force or q in self.idle or now - self.last_sent.get(q, 0.0) >= MIN_INTERVAL_S:
                await self._send(q, topics, fan_out, now)
            else:
                self.pending[q] = (topics, fan_out)

    async def resend(
        self, qs: Iterable[int], topics: Sequence[faust.TopicT], fan_out: bool
    ) -> None:
        """Markers for ``qs`` now, saying what is already done (after a rebalance, or when a
        partition turns idle): nothing of a batch in flight."""
        now = time.monotonic()
        for q in sorted(set(qs)):
            await self._send(q, topics, fan_out, now)

    async def flush(self) -> None:
        now = time.monotonic()
        for q, (topics, fan_out) in list(self.pending.items()):
            if now - self.last_sent.get(q, 0.0) >= MIN_INTERVAL_S:
                await self._send(q, topics, fan_out, now)

    async def _send(
        self, q: int, topics: Sequence[faust.TopicT], fan_out: bool, now: float
    ) -> None:
        self.pending.pop(q, None)
        self.last_sent[q] = now
        body = self.marker(q)
        for topic in topics:
            for p in range(self.partitions) if fan_out else (q,):
                await topic.send(value=body, partition=p)


class RawProgress(Marks):
    """Normalise's side: how far each raw partition has been read, to tell when it is idle."""

    def __init__(self, partitions: int, idle_after: float) -> None:
        super().__init__(partitions)
        self.idle_after = idle_after
        self.read: dict[Any, int] = {}  # raw topic-partition -> last offset read
        self.last_input: dict[int, float] = {}
        self.started = time.monotonic()

    def note(self, events: Sequence[Any], times: Sequence[datetime | None]) -> set[int]:
        """Note a batch (and each event's event time, None if it has none); returns the docs
        partitions it goes to."""
        now = time.monotonic()
        touched = set()
        for event, t in zip(events, times, strict=True):
            tp = event.message.tp
            self.read[tp] = max(self.read.get(tp, -1), event.message.offset)
            q = event.message.partition % self.partitions
            touched.add(q)
            self.last_input[q] = now
            self.saw(q, t)
        return touched

    def reassigned(self) -> None:
        """After a rebalance: partitions are read again from their committed offsets, so what was
        read before says nothing about being at the end now."""
        self.read.clear()
        self.last_input.clear()
        self.idle.clear()
        self.started = time.monotonic()

    async def newly_idle(self, consumer: Any, assigned: Iterable[Any]) -> set[int]:
        """Docs partitions whose raw partitions are all read to their end and quiet: the ones
        not yet marked idle."""
        now = time.monotonic()
        by_q: dict[int, list[Any]] = {}
        for tp in assigned:
            by_q.setdefault(tp.partition % self.partitions, []).append(tp)
        out = set()
        for q, tps in by_q.items():
            if q in self.idle or q in self.inflight:
                continue
            if now - self.last_input.get(q, self.started) < self.idle_after:
                continue
            if all([await self._at_end(consumer, tp) for tp in tps]):
                out.add(q)
        self.idle |= out
        return out

    async def _at_end(self, consumer: Any, tp: Any) -> bool:
        """Read to the end: the last offset processed here, or (for a partition this worker has
        processed nothing of since it got it, e.g. one finished before a restart) its committed
        offset. Not the consumer's position: that counts what the fetcher has fetched, which can
        run far ahead of what was processed (after a restart, a whole partition's rest can sit in
        the stream's buffer behind other partitions' events), and an idle marker for it then
        would let the risk stage release other partitions' scores past its documents.

        The end is the high water of the broker's last answer to a fetch, which must be recent
        (within ``idle_after``): a broker that stops answering leaves it where it was, and records
        published just before were then taken for none (their partition marked idle, and other
        partitions' scores released past them)."""
        try:
            if not consumer.answered_within(tp, max(self.idle_after, FRESH_S)):
                return False
            end = consumer.highwater(tp)
            last = self.read.get(tp)
            if last is None:
                committed = committed_offset(consumer, tp)
                last = -1 if committed is None else committed - 1
        except Exception:  # not fetched yet, or not ours any more
            return False
        return end is not None and last >= end - 1


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset committed for ``tp`` (the next one to process), as Faust's consumer knows it:
    set when it seeks to the committed offsets after an assignment, and advanced at each commit.
    None when nothing was committed (or offset 0, which Faust keeps as None)."""
    offsets = getattr(consumer, "_committed_offset", None)
    return None if offsets is None else offsets.get(tp)

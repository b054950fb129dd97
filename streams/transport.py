"""The worker's Kafka transport: Faust's aiokafka driver, with the fetch wait a setting.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no way to change it. Against
Apache Kafka that costs nothing (a fetch returns as soon as ``fetch_min_bytes`` of records are
there), but the embedded Tansu broker holds a fetch for its whole wait when nothing was there when
it came, even if records arrive meanwhile (measured with aiokafka here: a record published to an
idle topic reached its consumer after 483 ms at the median with a 1500 ms wait, 108 ms with 500 ms,
12 ms with 100 ms). A worker has three such hops (raw -> docs -> scored/groups), and each stage
batches, so the wait was most of a document's way from publish to its risk row.

It also makes Faust's offset commits safe (``_Consumer``): Faust can commit past a message that no
stage has processed, and a worker that dies or hands the partition over then never reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

import faust
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message

log = logging.getLogger(__name__)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_wait_ms", None)
        # aiokafka keeps the argument here and hands it to its fetcher when it starts
        if wait_ms is not None and hasattr(consumer, "_fetch_max_wait_ms"):
            consumer._fetch_max_wait_ms = wait_ms
        elif wait_ms is not None:
            log.warning("this aiokafka has no _fetch_max_wait_ms: fetches wait Faust's 1500 ms")
        return consumer


class _Consumer(driver.Consumer):
    """Faust's aiokafka consumer, which never commits past a message it has not had acknowledged.

    Faust's fetcher loop delivers the records of one fetch one by one, and keeps, per partition,
    the offset it delivered last; a record below it is dropped, and one more than one above it
    makes the offsets in between a "gap" (meant for compacted and transactional topics), which the
    commit counts as acknowledged. A seek while a fetch's records are still being delivered (the
    stages seek back when events come past the one they owe: ``streams.context.Positions``) broke
    both: the next record of the old fetch was far above the new position, so the offsets in
    between became a gap (committed, though never processed: lost to the next owner of the
    partition), and the records fetched again from the new position were dropped (measured here:
    a seek from 1,023 back to 200 redelivered nothing; the stream went on at 1,024). Three guards:

    - After ``seek``, what is left of a fetch made before it is not delivered for that partition
      (it comes again from the new position), and the first record from the new position is.
    - No gaps: riskwire's topics are neither compacted nor transactional, so their offsets have
      none; a missing offset holds the commit back instead of being skipped.
    - A partition's commit waits for its committed offset itself to be acknowledged (Faust commits
      the first run of acknowledged offsets even when it begins one above the committed offset),
      and a partition with no committed offset starts, and commits, from its beginning. If later
      offsets are acknowledged and that one is not for ``HOLE_WAIT_S``, the partition is sought
      back to it: a commit never passes a message, and never stops for good.
    """

    HOLE_WAIT_S = 30.0  # how long a commit may be held by a missing offset before seeking back

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetches = 0  # getmany calls so far
        self._sought: dict[TP, tuple[int, int]] = {}  # tp -> (offset sought, fetch under way)
        self._held_since: dict[TP, float] = {}
        self._seeks: set[asyncio.Future[None]] = set()  # seeks back under way (see ``_hole``)

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def answered_within(self, tp: TP, seconds: float) -> bool:
        """Whether the broker answered a fetch of ``tp`` (telling its high water) in the last
        ``seconds``. A broker that stops answering leaves the high water as it was, however many
        records came since."""
        thread = cast(driver.AIOKafkaConsumerThread, self._thread)
        at_ms = thread._ensure_consumer().last_poll_timestamp(tp)
        return at_ms is not None and time.time() - at_ms / 1000.0 < seconds

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset (Faust, after each assignment), and a
        partition with none to its beginning: aiokafka leaves such a partition where its fetcher
        was, past records fetched before the rebalance and dropped in it, never processed."""
        await super().perform_seek()
        # none, or -1 (what the broker answers for a group with offsets, but none for it)
        fresh = [tp for tp in self.assignment() if (self._committed_offset.get(tp) or 0) <= 0]
        if not fresh:
            return
        for tp, offset in (await self.earliest_offsets(*fresh)).items():
            await self.seek(tp, offset)
            self._committed_offset[tp] = offset  # where the commit starts: held until it is acked

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._sought[ensure_TP(partition)] = (offset, self._fetches)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        self._fetches += 1
        fetch = self._fetches
        async for tp, message in super().getmany(timeout):
            sought = self._sought.get(tp)
            if sought is not None:
                offset, during = sought
                if message.offset != offset and fetch <= during:
                    continue  # fetched before the seek: it comes again from the new position
                del self._sought[tp]
                # a record of that fetch still being delivered when the seek came has moved the
                # fetcher's last-delivered offset past this one: without this it would be dropped
                self._read_offset[tp] = message.offset
            yield tp, message

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        return None  # no gaps in riskwire's topics: a missing offset is one not processed yet

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and committed >= 0 and min(acked) > committed:
            self._hole(tp, committed, min(acked))
            return None
        self._held_since.pop(tp, None)
        return cast(int | None, super()._new_offset(tp))

    def _hole(self, tp: TP, committed: int, lowest: int) -> None:
        """Offsets from ``committed`` are not acknowledged, later ones are. Every stage
        acknowledges in offset order, so those were never processed here (dropped by a path
        nothing else caught): after ``HOLE_WAIT_S``, seek back to take them again (a repeat of
        what was processed since is harmless: writes are idempotent)."""
        now = time.monotonic()
        since = self._held_since.setdefault(tp, now)
        if now - since < self.HOLE_WAIT_S or tp not in self.assignment():
            return
        self._held_since[tp] = now
        log.warning(
            "%s: commit held at %d for %.0f s: that offset is not acknowledged, %d is: seeking "
            "back to it", tp, committed, now - since, lowest,
        )  # fmt: skip
        task = asyncio.ensure_future(self.seek(tp, committed))
        self._seeks.add(task)
        task.add_done_callback(self._seeks.discard)


class _Transport(driver.Transport):
    Consumer: ClassVar[Any] = _Consumer


class RiskwireApp(faust.App):
    """A Faust app whose consumer fetches with ``fetch_wait_ms`` (``kafka_fetch_wait_ms``)."""

    def __init__(self, *args: Any, fetch_wait_ms: int | None = None, **kwargs: Any) -> None:
        self.fetch_wait_ms = fetch_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

"""Watermark markers say only what is true: nothing of a batch still in flight.

The risk stage releases held scores up to the lowest marker of every source partition, so a marker
that ran ahead of the scores it vouches for (sent by a rebalance or a timer while a batch was still
being scored and sent) would let other partitions' later scores through first: the crash test's
rebalance once caught exactly that, as rolling rows that differed from an uninterrupted run.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from riskwire.records import Watermark
from streams.watermarks import Marks, RawProgress

T0 = datetime(2026, 9, 1, tzinfo=UTC)


class Sink:
    """Where markers go: (partition, marker) in the order sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Watermark]] = []

    async def send(self, value: bytes, partition: int) -> None:
        self.sent.append((partition, Watermark.from_json(value)))

    def last(self, q: int) -> Watermark:
        return [m for _, m in self.sent if m.source_partition == q][-1]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_batch_is_vouched_for_only_once_it_is_sent() -> None:
    marks, sink = Marks(2), Sink()
    marks.saw(0, T0)
    run(marks.send([0], [sink], fan_out=False, force=True))
    assert sink.last(0).event_time == T0

    marks.saw(0, T0 + timedelta(hours=3))  # a new batch, its scores not sent yet
    run(marks.resend([0, 1], [sink], fan_out=False))  # a rebalance meanwhile
    assert sink.last(0).event_time == T0 and not sink.last(0).idle
    assert sink.last(1).event_time is None  # nothing of partition 1 was ever done

    run(marks.send([0], [sink], fan_out=False, force=True))  # the batch is done
    assert sink.last(0).event_time == T0 + timedelta(hours=3)


def test_fanned_out_markers_reach_every_partition() -> None:
    marks, sink = Marks(3), Sink()
    marks.saw(1, T0)
    run(marks.send([1], [sink], fan_out=True, force=True))
    assert sorted(p for p, _ in sink.sent) == [0, 1, 2]


def test_a_held_back_marker_flushed_mid_batch_says_what_was_done() -> None:
    marks, sink = Marks(1), Sink()
    marks.saw(0, T0)
    run(marks.send([0], [sink], fan_out=False, force=True))
    marks.saw(0, T0 + timedelta(minutes=5))
    run(marks.send([0], [sink], fan_out=False))  # throttled: held back
    assert sink.last(0).event_time == T0
    marks.saw(0, T0 + timedelta(hours=1))  # the next batch, in flight
    marks.last_sent[0] = 0.0  # long enough ago
    run(marks.flush())
    assert sink.last(0).event_time == T0 + timedelta(minutes=5)


def test_upstream_idle_is_passed_on_only_after_the_batch_that_read_it() -> None:
    marks, sink = Marks(1), Sink()
    marks.saw(0, T0)  # a document, then upstream's idle marker, in one batch
    marks.saw_idle(0)
    run(marks.resend([0], [sink], fan_out=False))
    assert not sink.last(0).idle  # the document's score is not sent yet
    run(marks.send([0], [sink], fan_out=False, force=True))
    assert sink.last(0).idle
    marks.saw(0, T0 + timedelta(hours=1))  # more input: not idle any more, at once
    run(marks.resend([0], [sink], fan_out=False))
    assert not sink.last(0).idle


class Consumer:
    """What ``RawProgress`` asks a consumer: the high water, and the committed offset (kept as
    Faust's consumer keeps it); its fetch position runs ahead of both (``fetched``)."""

    def __init__(self, end: int, committed: int | None = None, fetched: int | None = None) -> None:
        self.end = end
        self._committed_offset = {TopicPartition("raw", 0): committed}
        self.fetched = end if fetched is None else fetched

    def highwater(self, tp: Any) -> int:
        return self.end

    def answered_within(self, tp: Any, seconds: float) -> bool:
        return True  # the high water is the broker's latest word

    async def position(self, tp: Any) -> int:
        return self.fetched


def event(partition: int, offset: int) -> Any:
    tp = TopicPartition("raw", partition)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, partition=partition, offset=offset))


def test_with_two_batches_in_flight_each_vouches_only_for_itself() -> None:
    """The scoring stage scores a batch while the one before it is written and sent on: the
    first one's markers must not claim what the second one read."""
    marks, sink = Marks(2), Sink()
    marks.saw(0, T0)
    first = marks.seal([0])
    marks.saw(0, T0 + timedelta(hours=5))
    marks.saw(1, T0 + timedelta(hours=6))
    second = marks.seal([0, 1])
    assert marks.inflight == {0, 1}

    run(marks.send_sealed(first, [sink], fan_out=False, force=True))
    assert sink.last(0).event_time == T0  # not the second batch's 05:00
    assert marks.inflight == {0, 1}  # the second batch still reads both

    run(marks.resend([0, 1], [sink], fan_out=False))  # a rebalance meanwhile
    assert sink.last(0).event_time == T0 and sink.last(1).event_time is None

    run(marks.send_sealed(second, [sink], fan_out=False, force=True))
    assert sink.last(0).event_time == T0 + timedelta(hours=5)
    assert sink.last(1).event_time == T0 + timedelta(hours=6)
    assert marks.inflight == set()


def test_an_idle_marker_is_not_passed_on_while_a_later_batch_reads_that_partition() -> None:
    marks, sink = Marks(1), Sink()
    marks.saw(0, T0)
    marks.saw_idle(0)  # upstream: partition 0 is read to its end
    first = marks.seal([0])
    marks.saw(0, T0 + timedelta(minutes=1))  # ... and then it was not any more
    second = marks.seal([0])

    run(marks.send_sealed(first, [sink], fan_out=False, force=True))
    assert not sink.last(0).idle  # the second batch's scores are not sent yet
    run(marks.send_sealed(second, [sink], fan_out=False, force=True))
    assert not sink.last(0).idle and sink.last(0).event_time == T0 + timedelta(minutes=1)

    marks.saw_idle(0)  # idle again, with no batch after it: passed on when sent
    run(marks.send([0], [sink], fan_out=False, force=True))
    assert sink.last(0).idle


def test_a_raw_partition_is_idle_only_when_read_to_its_end_quiet_and_not_in_flight() -> None:
    progress = RawProgress(2, idle_after=0.0)
    tp = event(0, 9).message.tp
    progress.note([event(0, 9)], [T0])  # read to the end (offset 9 of 10), batch in flight
    assert run(progress.newly_idle(Consumer(10), [tp])) == set()
    sink = Sink()
    run(progress.send([0], [sink], fan_out=False, force=True))
    assert run(progress.newly_idle(Consumer(11), [tp])) == set()  # one more record came
    assert run(progress.newly_idle(Consumer(10), [tp])) == {0}
    run(progress.resend({0}, [sink], fan_out=False))
    assert sink.last(0).idle and sink.last(0).event_time == T0


class AnsweredConsumer(Consumer):
    """A consumer whose broker last answered a fetch ``answered_s_ago`` (None: never)."""

    def __init__(self, end: int, answered_s_ago: float | None) -> None:
        super().__init__(end)
        self.answered_s_ago = answered_s_ago

    def answered_within(self, tp: Any, seconds: float) -> bool:
        return self.answered_s_ago is not None and self.answered_s_ago < seconds


def test_a_partition_is_not_idle_on_a_high_water_the_broker_has_not_confirmed_lately() -> None:
    """A broker that stops answering leaves the consumer's high water where it was: records
    published just before would be taken for none, and the risk stage would release other
    partitions' scores past their documents."""
    progress = RawProgress(1, idle_after=2.0)
    tp = event(0, 9).message.tp
    progress.note([event(0, 9)], [T0])
    run(progress.send([0], [Sink()], fan_out=False, force=True))
    progress.last_input[0] -= 10  # quiet for 10 s
    assert run(progress.newly_idle(AnsweredConsumer(10, answered_s_ago=30), [tp])) == set()
    assert run(progress.newly_idle(AnsweredConsumer(10, answered_s_ago=None), [tp])) == set()
    assert run(progress.newly_idle(AnsweredConsumer(10, answered_s_ago=0.1), [tp])) == {0}


def test_after_a_restart_a_partition_is_idle_only_once_processed_not_once_fetched() -> None:
    """A restarted worker has processed nothing of a partition yet: whether it is at its end is
    what was committed, not how far the fetcher got (the rest may wait in the stream's buffer)."""
    progress = RawProgress(1, idle_after=0.0)
    tp = TopicPartition("raw", 0)
    fetched_not_processed = Consumer(100, committed=60, fetched=100)
    assert run(progress.newly_idle(fetched_not_processed, [tp])) == set()
    assert run(progress.newly_idle(Consumer(100, committed=None), [tp])) == set()
    assert run(progress.newly_idle(Consumer(0, committed=None), [tp])) == {0}  # empty
    progress.reassigned()
    assert run(progress.newly_idle(Consumer(100, committed=100), [tp])) == {0}  # finished before


def test_after_a_rebalance_a_partition_resumes_where_it_is_owed_not_where_it_was_fetched() -> None:
    from streams.context import Positions

    kept, moved, new, fresh = (
        TopicPartition("docs", 0),
        TopicPartition("docs", 1),
        TopicPartition("docs", 2),
        TopicPartition("docs", 3),
    )
    positions = Positions()
    positions.rebalanced({kept, moved}, {})
    assert all(positions.accept(kept, o) for o in range(100, 110))  # taken: 100..109
    assert positions.accept(moved, 50)
    # events 110.. were fetched, then cleared from the buffer; Faust starts new at its commit
    positions.rebalanced({kept, new, fresh}, {kept: 103, new: 7, fresh: None})
    assert not positions.accept(kept, 140)  # from where the fetcher was: not yet
    # back to the committed offset: the revoke dropped the uncommitted acknowledgements of
    # 103..109, so the commit waits for them to be taken again
    assert positions.seek_due(kept) == 103 and positions.seek_due(kept) is None  # once a while
    assert not positions.accept(new, 9)  # past where Faust starts it: 7 and 8 were not taken
    assert positions.seek_due(new) == 7
    assert positions.accept(new, 7) and positions.accept(new, 8) and positions.accept(new, 9)
    assert positions.accept(fresh, 12)  # no committed offset yet: wherever Faust starts it
    assert positions.accept(kept, 103)  # Faust's seek to the committed offset: repeats, fine
    assert all(positions.accept(kept, o) for o in range(104, 141))  # and onwards


def test_a_hole_in_what_a_partition_delivers_is_sought_back_not_skipped() -> None:
    from streams.context import Positions

    tp = TopicPartition("docs", 0)
    positions = Positions()
    positions.rebalanced({tp}, {tp: 40})
    assert all(positions.accept(tp, o) for o in range(40, 50))
    assert not positions.accept(tp, 57)  # 50..56 never came (the fetcher dropped them)
    assert not positions.accept(tp, 58)
    assert positions.seek_due(tp) == 50
    assert positions.accept(tp, 50)  # the seek brings them


def test_a_risk_stage_owes_again_the_scores_it_dropped() -> None:
    from streams.context import Positions

    tp = TopicPartition("scored", 3)
    positions = Positions()
    positions.rebalanced({tp}, {})
    assert all(positions.accept(tp, o) for o in range(20, 30))  # taken, 24.. still held
    positions.rewind(tp, 24)  # a revoke dropped the held ones
    positions.rebalanced({tp}, {tp: 22})
    assert not positions.accept(tp, 30)  # would release 30 before 24..29 come again
    assert not positions.accept(tp, 24)  # 22 and 23 are stored, but not committed
    assert all(positions.accept(tp, o) for o in range(22, 31))
    positions.rewind(tp, 26)  # dropped again
    positions.rebalanced({tp}, {tp: 28})  # committed past an offset owed: never happens, but
    assert not positions.accept(tp, 28)  # what is owed comes first
    assert positions.accept(tp, 26)


def test_between_a_revoke_and_the_next_assignment_nothing_of_a_revoked_partition_is_taken() -> None:
    from streams.context import Positions

    held, other = TopicPartition("groups", 1), TopicPartition("groups", 2)
    positions = Positions()
    positions.rebalanced({held, other}, {})
    assert all(positions.accept(held, o) for o in range(10, 20))  # taken: 10..19, 14.. held
    positions.rewind(held, 14)  # the revoke dropped the held ones
    positions.revoke({held})
    # still in the batch buffer, stamped with the old generation: 20.. must not be released
    # ahead of 14..19, which the next owner (maybe this worker) reads again
    assert not positions.accept(held, 20)
    assert positions.seek_due(held) is None  # not ours: nothing to seek
    assert positions.accept(other, 5)  # a partition not revoked is taken as before
    positions.rebalanced({held}, {held: 12})  # kept in the next generation
    assert not positions.accept(held, 20)
    assert all(positions.accept(held, o) for o in range(12, 16))

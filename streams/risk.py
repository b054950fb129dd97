"""scored -> alerts, and groups -> alerts: per-group aggregates and warning rules in event time.

Two agents run the same ``RiskStage``: one on the ``scored`` topic (keyed by ticker), one on the
``groups`` topic (the same scores re-keyed by sector and market). Keys decide partitions, so one
worker owns all of a group's state.

**Event-time order.** Scores reach a partition in the order the scoring stage produced them, which
interleaves the ``docs`` partitions, by hours of event time when there is a backlog. So the scoring
stage sends a ``Watermark`` marker to every partition after each batch: all scores of documents
from its ``docs`` partition q up to event time T have been sent (each ``docs`` partition is in the
order of its raw partition: normalise keeps records in their partition). The stage holds each
score until every ``docs`` partition's marker on its partition (less ``grace``, for disorder within
a partition) has passed it, and releases held scores in event-time order; a ``docs`` partition
marked idle is not waited for. So the engine sees every group's documents in the same order in any
run, and its results (rolling rows, aggregates, alerts) are the same whether the worker ran
through, was killed and restarted, or handed partitions over. If markers stop coming altogether,
what is held is released after ``20 x reorder_idle_s`` of silence, but only if the broker has
answered this worker's fetches all that time: while it does not (paused, partitioned away), the
earlier documents may still be upstream, and what is held waits for them, with a warning that
names the ``docs`` partitions it waits for. (Released regardless, a broker frozen for longer
mid-stream left 67 of 4,000 rolling rows computed without earlier documents that came after;
``tests/streams/test_pauses.py``.)

**Nothing lost.** A held score's Kafka message stays unacknowledged (its offset uncommitted) until
the score is released and its results are stored, so a crash redelivers it. Results are written in
one transaction per release, with natural keys, so a redelivery stores nothing twice.

**State.** The engine's state is what it stored: each group's rolling rows (its counted events)
and alerts. A group the stage has not loaded since it got the partition is rebuilt from them first
(``repository.load_group_states``). When partitions are revoked the stage forgets their groups
and drops their held scores, which the new owner will be sent. A worker acquires each partition
it gets (a new epoch in the database), and each transaction that writes the partition's results
or rebuilds its groups first checks the epoch is still its own (``storage.fences``): a worker put
out of the group without knowing it (a long pause) is refused, and drops the partition as after
a revoke, instead of writing older aggregates and alert states over its successor's.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust
from sqlalchemy.orm import Session

from riskwire.exceptions import InvalidRecord
from riskwire.records import SCORE_BATCH, Alert, DeadLetter, Score, Watermark, group_key
from storage import delivery, repository
from storage.fences import Fenced, acquire, check
from streams.context import (
    Positions,
    WorkerContext,
    decode_pairs,
    event_batches,
    send_dead,
    storage_refused,
)
from streams.metrics import METRICS
from streams.pipeline import RiskEngine, RiskUpdate
from streams.pipeline.risk import Event
from streams.watermarks import is_marker

log = logging.getLogger(__name__)
STAGE = "risk"
FOREVER = datetime.max.replace(tzinfo=UTC)
# the broker "answers" if it answered a fetch within this (it answers one of a partition at its
# end every fetch wait, 100 ms by default)
ANSWERED_S = 3.0


def apply_scores(
    engine: RiskEngine, scores: Sequence[Score], now: datetime
) -> tuple[list[tuple[Score, RiskUpdate]], list[DeadLetter]]:
    """Feed scores to the engine in order; each score's update, and dead letters for failures
    and for scores later than the allowed lateness (stored, but not counted)."""
    updates: list[tuple[Score, RiskUpdate]] = []
    dead: list[DeadLetter] = []
    for score in scores:
        try:
            update = engine.process(score)
        except Exception as exc:  # a bug must cost one record, never the batch
            log.exception("risk evaluation failed for %s", score.document_id)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            dead.append(
                DeadLetter.of(STAGE, reason, score.to_json(), occurred_at=now, key=score.ticker)
            )
            continue
        updates.append((score, update))
        if update.late:
            reason = (
                f"late: event time {score.published_at.isoformat()} is more than the allowed "
                f"lateness ({engine.lateness}) behind the newest document of {score.ticker}; "
                "stored, but not counted in its windows, aggregates or rules"
            )
            dead.append(
                DeadLetter.of("late", reason, score.to_json(), occurred_at=now, key=score.ticker)
            )
    return updates, dead


def persist_risk(
    session: Session,
    updates: Sequence[tuple[Score, RiskUpdate]],
    targets: delivery.Targets | None = None,
    aggregates: Sequence[dict[str, Any]] = (),
) -> None:
    """Rolling rows, aggregates and alerts, and (in the same transaction: the outbox) the alerts'
    events and their deliveries."""
    now = datetime.now(UTC)
    rows = [{**u.row, "late": u.late, "stored_at": now} for _, u in updates if u.row is not None]
    alerts = [a for _, u in updates for a in u.alerts]
    repository.upsert_ticker_sentiment(session, rows)
    repository.upsert_aggregates(session, aggregates)
    repository.upsert_alerts(session, alerts)
    if alerts:
        delivery.record_alert_events(session, alerts, targets or delivery.Targets(), now)


def restore_groups(engine: RiskEngine, session: Session, keys: Sequence[str]) -> None:
    """Rebuild groups from what was stored for them: everything a baseline or window can reach."""
    back = engine.baseline + 2 * engine.horizon
    for key, state in repository.load_group_states(session, engine.run_id, keys, back).items():
        events = [
            Event(t if t.tzinfo else t.replace(tzinfo=UTC), doc, score, label == "negative",
                  story or "", disagreement or 0.0)
            for t, doc, score, label, disagreement, story in state.events
        ]  # fmt: skip
        engine.restore_group(key, events, state.firing, state.last_fired)


@dataclass(order=True)
class Held:
    """A score waiting for its turn, in event-time order; its message is finished on release."""

    sort: tuple[datetime, str, str]
    score: Score = field(compare=False)
    ack: list[Any] = field(compare=False)  # its message's [event, scores held] in the ack queue


class RiskStage:
    """The reorder buffer, the engine and the writes of one risk agent (see the module doc)."""

    def __init__(
        self, ctx: WorkerContext, engine: RiskEngine, topic: str, name: str = STAGE
    ) -> None:
        self.ctx = ctx
        self.engine = engine
        self.topic = topic
        self.name = name  # the agent's, in logs and metrics
        self.grace = timedelta(seconds=ctx.settings.reorder_grace_s)
        self.held: dict[int, list[Held]] = {}
        self.acks: dict[int, deque[list[Any]]] = {}  # per partition: [event, held] in order
        # per partition: per docs partition, (newest event time marked, idle)
        self.marks: dict[int, dict[int, tuple[datetime | None, bool]]] = {}
        self.sources = ctx.settings.topic_partitions
        # with scores held and no input for this long: released if the broker has answered all
        # along, else held and reported (``flush_idle``)
        self.stall_after = max(20 * ctx.settings.reorder_idle_s, 10.0)
        self.stall_reported = 0.0
        self.unanswered_at = time.monotonic()  # when the broker was last seen not answering
        self.partition_of: dict[str, int] = {}
        self.loaded: set[str] = set()
        self.last_input = time.monotonic()
        self.released = 0
        self.reported = 0.0
        self.warned = 0
        self.offsets: dict[int, int] = {}  # per partition: the last offset taken
        # per partition: its topic-partition, the consumer group generation its messages came
        # in, and (generation, epoch) when this worker acquired it (``storage.fences``)
        self.tps: dict[int, Any] = {}
        self.generations: dict[int, int] = {}
        self.tokens: dict[int, tuple[int | None, int]] = {}
        self.positions = Positions()  # where each partition resumes after a rebalance
        self.lock = asyncio.Lock()
        self.alerts: faust.TopicT | None = None
        self.dead: faust.TopicT | None = None

    async def take(self, events: Sequence[Any]) -> None:
        """Hold a batch's scores and release what the watermarks allow. Never raises."""
        async with self.lock:
            now = datetime.now(UTC)
            bad: list[DeadLetter] = []
            for event in events:
                partition, offset = event.message.partition, event.message.offset
                last = self.offsets.get(partition)
                if last is not None and offset <= last:
                    # Faust sought back (to the committed offset): what this partition held, or
                    # had marked, since then comes again; start it over from here, as a revoke
                    # and reassignment would, so nothing is released ahead of what comes back
                    log.info(
                        "risk stage on %s: partition %d went back from offset %d to %d (%d held "
                        "there): starting it over", self.topic, partition, last, offset,
                        len(self.held.get(partition, ())),
                    )  # fmt: skip
                    self._forget_partitions({partition}, "starts over with", resume_at=offset)
                self.offsets[partition] = offset
                self.tps[partition] = event.message.tp
                generation = getattr(event.message, "generation_id", None)
                if generation is not None:
                    self.generations[partition] = generation
                # every message is held, and acknowledged in offset order once none of its
                # scores is held any more (see ``_ack``): [event, scores still held]
                event.message.incref()
                entry = [event, 0]
                self.acks.setdefault(event.message.partition, deque()).append(entry)
                if is_marker(event.value):
                    self._mark(event)
                    continue
                topic = event.message.topic
                decoded, invalid = decode_pairs([event], Score, STAGE, now, batch=SCORE_BATCH)
                bad += invalid
                for _, score in decoded:
                    if score.ticker is None:
                        reason = "a scored mention needs a ticker or group key"
                        bad.append(DeadLetter.of(STAGE, reason, score.to_json(), occurred_at=now,
                                                 topic=topic, key=event.key))  # fmt: skip
                        continue
                    heapq.heappush(
                        self.held.setdefault(partition, []),
                        Held((score.published_at, score.ticker, score.document_id), score, entry),
                    )
                    entry[1] += 1
                    self.partition_of[score.ticker] = partition
            self.last_input = time.monotonic()
            await self._send_dead(bad)
            bounds = {p: self.bound(p) for p in self.held}
            await self._release({p: b for p, b in bounds.items() if b is not None})
            self._ack()

    def _ack(self) -> None:
        """Acknowledge finished messages in offset order, each partition up to its first
        unfinished one. (Faust commits the first run of acknowledged offsets; on a partition with
        no committed offset yet it does so even with unacknowledged ones before it, so a message
        held there would be skipped by a restart.)"""
        for queue in self.acks.values():
            while queue and not queue[0][1]:
                queue.popleft()[0].ack()

    def _mark(self, event: Any) -> None:
        try:
            mark = Watermark.from_json(event.value)
        except InvalidRecord:
            log.warning("ignoring a malformed watermark on %s: %r", self.topic, event.value[:200])
            return
        marks = self.marks.setdefault(event.message.partition, {})
        before, _ = marks.get(mark.source_partition, (None, False))
        t = mark.event_time
        if before is not None and (t is None or before > t):
            t = before  # markers only move forward
        marks[mark.source_partition] = (t, mark.idle)

    def bound(self, partition: int) -> datetime | None:
        """Held scores of ``partition`` up to this time can be released; None: none yet."""
        marks = self.marks.get(partition, {})
        lowest = FOREVER
        for q in range(self.sources):
            t, idle = marks.get(q, (None, False))
            if idle:
                continue
            if t is None:
                return None
            lowest = min(lowest, t)
        return lowest if lowest == FOREVER else lowest - self.grace

    def stalled_s(self) -> float:
        """Seconds since the last input (scores or markers) while scores are held; else 0."""
        if not any(self.held.values()):
            return 0.0
        return max(0.0, time.monotonic() - self.last_input)

    def waiting_for(self) -> dict[int, list[int]]:
        """Per partition holding scores, the ``docs`` partitions whose markers it waits for: those
        not marked yet, or else the ones (not idle) marked least far."""
        out: dict[int, list[int]] = {}
        for p, heap in self.held.items():
            if not heap:
                continue
            marks = self.marks.get(p, {})
            busy = {q: t for q in range(self.sources) for t, idle in [marks.get(q, (None, False))]
                    if not idle}  # fmt: skip
            unmarked = sorted(q for q, t in busy.items() if t is None)
            lowest = min((t for t in busy.values() if t is not None), default=None)
            out[p] = unmarked or sorted(q for q, t in busy.items() if t == lowest)
        return out

    async def flush_idle(self, answering: bool) -> None:
        """Called every few moments with whether the broker answers this worker's fetches. Once
        nothing, not even a marker, has come for ``stall_after`` while scores are held:

        - if the broker has answered all that time, upstream has nothing more to send now, or its
          markers went missing: what is held is released, as the markers would have let it;
        - if it has not (a broker paused, partitioned away, being moved), the earlier documents
          may still be upstream, to come once it is back: released now, the held scores would be
          overtaken by them. So they stay held, and the stall is reported.
        """
        now = time.monotonic()
        if not answering:
            self.unanswered_at = now
        if self.stalled_s() < self.stall_after:
            return
        if now - self.unanswered_at < self.stall_after:
            self.report_stall()
            return
        async with self.lock:
            # said before the release empties what they describe
            held, stalled, waiting = (
                sum(map(len, self.held.values())),
                self.stalled_s(),
                self.waiting_for(),
            )
            await self._release({p: FOREVER for p in self.held})
            self._ack()
            log.warning(
                "risk stage on %s: nothing received for %.0f s while the broker answers: released "
                "all %d held (markers of docs partitions %s missing); %d out of order so far",
                self.topic, stalled, held, waiting, self.engine.out_of_order,
            )  # fmt: skip

    def report_stall(self) -> bool:
        """Warn, at most once a minute, while scores are held and nothing has come for a long
        while; True when it did. They stay held (their messages unacknowledged) until the
        markers come again."""
        stalled = self.stalled_s()
        now = time.monotonic()
        if stalled < self.stall_after or now - self.stall_reported < 60.0:
            return False
        self.stall_reported = now
        log.warning(
            "risk stage on %s: %d scores held and nothing received for %.0f s; waiting for the "
            "markers of docs partitions %s (per partition holding scores) to release them in "
            "event-time order: is the broker answering, and the scoring stage running?",
            self.topic, sum(len(h) for h in self.held.values()), stalled, self.waiting_for(),
        )  # fmt: skip
        return True

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Forget the groups of revoked partitions and drop their held scores (redelivered to the
        new owner: their offsets were never committed)."""
        async with self.lock:
            self._forget_partitions(set(partitions), "gave up")

    def _forget_partitions(self, gone: set[int], why: str, resume_at: int | None = None) -> None:
        """Drop everything held, marked and known of the groups of ``gone`` partitions: what was
        not finished is read again (the partition is owed from its first unfinished offset, unless
        it goes on from ``resume_at``, at or before that)."""
        for p in gone:
            self.offsets.pop(p, None)
            self.tokens.pop(p, None)  # acquired again if it comes back
            unfinished = self.acks.get(p)
            if unfinished:  # dropped, not processed: owed again from the first of them
                first = unfinished[0][0].message
                if resume_at is None or first.offset < resume_at:
                    self.positions.rewind(first.tp, first.offset)
            self.held.pop(p, None)
            self.marks.pop(p, None)
            self.acks.pop(p, None)
        keys = [k for k, p in self.partition_of.items() if p in gone]
        self.engine.forget(keys)
        self.loaded.difference_update(keys)
        for k in keys:
            del self.partition_of[k]
        if keys:
            log.info("risk stage on %s %s %d groups", self.topic, why, len(keys))

    async def _release(self, bounds: dict[int, datetime]) -> None:
        released: list[Held] = []
        partitions: set[int] = set()
        for p, bound in bounds.items():
            heap = self.held.get(p)
            while heap and heap[0].sort[0] <= bound:
                released.append(heapq.heappop(heap))
                partitions.add(p)
        if not released:
            return
        released.sort()
        try:
            await self._process(released, partitions)
        except Exception as exc:
            # never lose them: hold them again, and rebuild their groups from what was stored
            keys = {h.score.ticker for h in released if h.score.ticker is not None}
            self.engine.forget(keys)
            self.loaded.difference_update(keys)
            for held in released:
                heapq.heappush(self.held.setdefault(self.partition_of[held.sort[1]], []), held)
            if isinstance(exc, Fenced):
                self._fenced(exc)
            else:
                log.exception("risk stage failed on %d scores; retrying them", len(released))
            return
        for held in released:
            held.ack[1] -= 1
        self.released += len(released)
        METRICS.scores_released.labels(self.name).inc(len(released))
        METRICS.finished(self.name, released[-1].sort[0])
        if time.monotonic() - self.reported >= 10:
            self.reported = time.monotonic()
            log.info(
                "risk stage on %s: %d released, %d held, %d out of event-time order, %d late",
                self.topic, self.released, sum(len(h) for h in self.held.values()),
                self.engine.out_of_order, self.engine.late,
            )  # fmt: skip

    def _fenced(self, exc: Fenced) -> None:
        """Another worker owns these partitions now (this one was put out of the group, say by a
        long pause, and has not heard yet): drop what it holds of them, unacknowledged, and take
        nothing more of them until the next rebalance, as after a revoke."""
        gone = set(exc.partitions)
        log.warning("risk stage fenced off: %s; dropping partitions %s until the next rebalance",
                    exc, sorted(gone))  # fmt: skip
        self._forget_partitions(gone, "was fenced off")
        self.positions.revoke(self.tps[p] for p in gone if p in self.tps)

    async def _acquire(self, partitions: set[int]) -> None:
        """Acquire, in a transaction of its own, the partitions not acquired yet in the generation
        their messages came in: from then on, a worker that had them before is refused."""
        due = sorted(
            p for p in partitions
            if self.tokens.get(p, (-1, 0))[0] != self.generations.get(p)
        )  # fmt: skip
        if not due:
            return
        got: dict[int, int] = {}

        def work(session: Session, ps: Sequence[int]) -> None:
            got.clear()
            by_generation: dict[int | None, list[int]] = {}
            for p in ps:
                by_generation.setdefault(self.generations.get(p), []).append(p)
            for generation, group in by_generation.items():
                got.update(acquire(session, self.topic, group, generation))

        await asyncio.to_thread(self.ctx.transact, due, work)
        for p in due:  # committed: these are the tokens
            self.tokens[p] = (self.generations.get(p), got[p])

    def _check(self, session: Session, partitions: Iterable[int]) -> None:
        """Refuse (``Fenced``) a transaction on partitions another worker acquired since."""
        check(session, self.topic, {p: self.tokens[p][1] for p in partitions if p in self.tokens})

    async def _process(self, released: list[Held], partitions: set[int]) -> None:
        now = datetime.now(UTC)
        await self._acquire(partitions)
        scores = [h.score for h in released]
        fresh = sorted({s.ticker for s in scores if s.ticker and s.ticker not in self.loaded})
        if fresh:
            await asyncio.to_thread(self._restore, fresh, {self.partition_of[k] for k in fresh})
        behind = self.engine.out_of_order
        updates, dead = apply_scores(self.engine, scores, now)
        if self.engine.out_of_order > behind and self.warned < 20:
            try:
                self._warn_out_of_order(released)
            except Exception:  # a diagnostic must never stop the stage
                log.exception("could not describe out-of-order scores")
        aggregates = self.engine.drain_aggregates()

        def write(session: Session, batch: Sequence[tuple[Score, RiskUpdate]]) -> None:
            self._check(session, partitions)
            persist_risk(session, batch, self.ctx.targets, aggregates)

        refused = await self.ctx.write(updates, write)
        dead += [storage_refused(e, s.to_json(), s.ticker, now) for (s, _), e in refused]
        await self._send_dead(dead)
        lost = {(s.ticker, s.document_id) for (s, _), _ in refused}
        stored = [u for s, u in updates if (s.ticker, s.document_id) not in lost]
        for alert in (a for u in stored for a in u.alerts):
            await self._send_alert(alert)

    def _warn_out_of_order(self, released: list[Held]) -> None:
        """Scores behind their group's newest: the watermarks let something through too early.
        Say what, and what the markers said, so the cause can be found (a few times at most)."""
        self.warned += 1
        newest = {k: w.high_water for k, w in self.engine.windows.items()}
        first = released[0].score
        log.warning(
            "risk stage on %s: %d scores out of event-time order so far; this release: %d scores "
            "from %s (%s, %s), groups' newest %s; marks %s",
            self.topic, self.engine.out_of_order, len(released), first.published_at.isoformat(),
            first.ticker, first.document_id,
            {k: t.isoformat() for k, t in newest.items() if t is not None and k in
             {h.score.ticker for h in released}},
            {p: {q: (t.isoformat() if t else None, idle) for q, (t, idle) in m.items()}
             for p, m in self.marks.items()},
        )  # fmt: skip

    def _restore(self, keys: list[str], partitions: set[int]) -> None:
        """Rebuild groups from what was stored, their partitions acquired: a write of a worker
        that had them before is then either read back here or refused."""

        def work(session: Session, k: Sequence[str]) -> None:
            self._check(session, partitions)
            restore_groups(self.engine, session, k)

        self.ctx.transact(keys, work)
        self.loaded.update(keys)

    async def _send_dead(self, letters: Sequence[DeadLetter]) -> None:
        if letters and self.dead is not None:
            await send_dead(self.dead, letters)

    async def _send_alert(self, alert: Alert) -> None:
        log.info("alert %s %s %s: %s", alert.state, alert.severity, alert.ticker, alert.explanation)
        METRICS.alerts.labels(alert.rule, alert.severity, alert.state).inc()
        if self.alerts is not None:
            await self.alerts.send(key=alert.ticker.encode(), value=alert.to_json())


def group_mentions(score: Score, sector_of: dict[str, str], market: bool) -> list[Score]:
    """The sector and market records of one document's scored mentions (one per group)."""
    keys: list[str] = []
    if sector_of and score.ticker in sector_of:
        keys.append(group_key("sector", sector_of[score.ticker]))
    if market:
        keys.append(group_key("market"))
    return [score.model_copy(update={"ticker": k}) for k in keys]


def register(app: faust.App, ctx: WorkerContext) -> None:
    alerts_topic = app.topic(ctx.topics.alerts)
    dead = app.topic(ctx.topics.deadletter)
    stages = {
        ctx.topics.scored: RiskStage(ctx, ctx.risk, ctx.topics.scored, "risk"),
        ctx.topics.groups: RiskStage(ctx, ctx.group_risk, ctx.topics.groups, "group-risk"),
    }
    for stage in stages.values():
        stage.alerts, stage.dead = alerts_topic, dead

    def agent_for(stage: RiskStage) -> None:
        async def risk_agent(stream: faust.StreamT[bytes]) -> None:
            async for events in event_batches(stream, ctx.settings, stage.positions):
                await stage.take(events)

        app.agent(app.topic(stage.topic), name=stage.name)(risk_agent)

    for stage in stages.values():
        agent_for(stage)

    def each(read: Callable[[RiskStage], float]) -> list[tuple[tuple[str], float]]:
        return [((s.name,), float(read(s))) for s in stages.values()]

    probe = METRICS.probes.add
    probe(
        "riskwire_risk_held_scores",
        "gauge",
        "Scores a risk stage holds until the watermarks let them through in event-time order",
        ["stage"],
        lambda: each(lambda s: sum(len(h) for h in s.held.values())),
    )
    probe(
        "riskwire_risk_late_documents",
        "counter",
        "Documents later than the allowed lateness: "
        "counted and reported, not added to their windows",
        ["stage"],
        lambda: each(lambda s: s.engine.late),
    )
    probe("riskwire_risk_out_of_order_documents", "counter", "Documents older than their group's "
          "newest when they came (within the allowed lateness: their windows are updated)",
          ["stage"], lambda: each(lambda s: s.engine.out_of_order))  # fmt: skip

    probe("riskwire_risk_stalled_seconds", "gauge", "Seconds a risk stage holding scores has "
          "received nothing, not even a watermark (0 when it holds none)", ["stage"],
          lambda: each(lambda s: s.stalled_s()))  # fmt: skip

    def answering(topic: str) -> bool:
        """Whether the broker answered a fetch of one of ``topic``'s partitions here lately."""
        consumer = cast(Any, app.consumer)  # ``streams.transport._Consumer``
        return any(
            consumer.answered_within(tp, ANSWERED_S)
            for tp in consumer.assignment()
            if tp.topic == topic
        )

    @app.timer(interval=max(ctx.settings.reorder_idle_s / 2, 0.1))
    async def release_idle() -> None:
        for topic, stage in stages.items():
            await stage.flush_idle(answering(topic))

    async def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0] if args else kwargs.get("revoked", set())
        for topic, stage in stages.items():
            await stage.revoke(tp.partition for tp in revoked if tp.topic == topic)

    # faust types receivers as plain callables of (sender, *args, signal=...): this is one
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

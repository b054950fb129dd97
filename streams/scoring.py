"""docs -> scored: score batches through the ensemble, persist documents, votes and scores.

Scores go on as one message per partition of ``scored`` (mentions, by ticker) and of ``groups``
(sector and market records) per batch, each a ``scores/1`` batch, followed by the batch's
watermarks: the order within a partition is the order the documents were scored in. They carry the
fused score without the members' votes: the votes are stored with the document (the ``votes``
table), and nothing downstream reads them; on the topics they were most of each record's bytes and
of its encoding and validation."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from sqlalchemy.orm import Session

from riskwire.exceptions import InvalidRecord
from riskwire.records import DOCUMENT_BATCH, DeadLetter, Document, Score, Watermark, encode_scores
from storage import repository
from streams.context import (
    WorkerContext,
    decode_pairs,
    event_batches,
    send_dead,
    storage_refused,
)
from streams.metrics import METRICS
from streams.normalising import documents_per_message
from streams.pipeline import fan_out
from streams.risk import group_mentions
from streams.watermarks import Marks, Sealed, is_marker

log = logging.getLogger(__name__)
STAGE = "score"
SCORES_PER_MESSAGE = 128  # a few hundred kB at most: well under the broker's 1 MB message limit


def persist_scored(session: Session, pairs: Sequence[tuple[Document, Score]]) -> None:
    repository.upsert_documents(session, [d for d, _ in pairs])
    repository.upsert_scores(session, [s for _, s in pairs])


def scoring_failed(doc: Document, exc: Exception, now: datetime) -> DeadLetter:
    reason = f"scoring failed: {type(exc).__name__}: {exc}"
    return DeadLetter.of(STAGE, reason, doc.to_json(), occurred_at=now, key=doc.id)


async def score_batch(
    ctx: WorkerContext, docs: list[Document], now: datetime
) -> tuple[list[Score], list[DeadLetter]]:
    """Score a batch; if it fails, score one by one so only the bad documents dead-letter.

    Never raises: a model that cannot even be loaded dead-letters the batch with the reason.
    """
    if not docs:  # a batch of markers only
        return [], []
    try:
        return await ctx.score(docs), []
    except Exception as exc:
        log.exception("scoring a batch of %d failed; retrying one by one", len(docs))
        if not ctx.ensemble_loaded:
            return [], [scoring_failed(d, exc, now) for d in docs]
    scores, dead = [], []
    for doc in docs:
        try:
            scores.extend(await ctx.score([doc]))
        except Exception as exc:
            dead.append(scoring_failed(doc, exc, now))
    return scores, dead


async def send_scores(topic: faust.TopicT, by_partition: dict[int, list[Score]]) -> None:
    """A batch's scores, a message per partition (of at most ``SCORES_PER_MESSAGE``), in order."""
    for partition, scores in sorted(by_partition.items()):
        for start in range(0, len(scores), SCORES_PER_MESSAGE):
            chunk = scores[start : start + SCORES_PER_MESSAGE]
            await topic.send(value=encode_scores(chunk), partition=partition)


# how long a stopping worker waits for the batches in flight to be written and sent on
SETTLE_S = 30.0


async def settle(inflight: deque[asyncio.Future[None]], timeout: float) -> None:
    """Wait (up to ``timeout`` seconds) for the batches still in flight when the stream ended.
    What one of them raised is logged, not left for asyncio to report as never retrieved; its
    messages were not acknowledged, so the next start reads the batch again (idempotent writes
    make that harmless)."""
    if not inflight:
        return
    tasks = list(inflight)
    inflight.clear()
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
    except asyncio.CancelledError:  # stopped harder: they would find the producer gone
        for task in tasks:
            task.cancel()
        log.warning("scoring stopped with %d batch(es) in flight; read again when the "
                    "worker starts", sum(not t.done() for t in tasks))  # fmt: skip
        raise
    for task in pending:
        task.cancel()
    failed = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if pending or failed:
        log.warning(
            "%d of %d batch(es) in flight when scoring stopped were not finished (%s); they are "
            "read again when the worker starts",
            len(pending) + len(failed), len(tasks), failed[0] if failed else "timed out",
        )  # fmt: skip
    else:
        log.info("scoring stopped: the %d batch(es) in flight were finished", len(tasks))


def _count_stored(stored: Sequence[Document], taken: int) -> None:
    METRICS.documents.labels(STAGE, "stored").inc(len(stored))
    METRICS.documents.labels(STAGE, "dead").inc(taken - len(stored))
    if stored:
        now = datetime.now(UTC)
        for doc in stored:
            METRICS.document_age.observe((now - doc.fetched_at).total_seconds())
        METRICS.finished(STAGE, max(d.published_at for d in stored))


def register(app: faust.App, ctx: WorkerContext) -> None:
    docs_topic = app.topic(ctx.topics.docs)
    scored = app.topic(ctx.topics.scored)
    groups = app.topic(ctx.topics.groups)
    outputs = [scored, groups]
    sector_of = dict(ctx.targets.sector_of) if ctx.settings.sector_groups else {}
    market = ctx.settings.market_group
    dead = app.topic(ctx.topics.deadletter)

    marks = Marks(ctx.settings.topic_partitions)
    partitions = ctx.settings.topic_partitions

    def partition_of(key: str) -> int:
        """The partition Kafka's default partitioner gives ``key``: a group's scores all go to
        one partition, so one worker owns its state."""
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions

    async def finish(
        docs: list[Document], bad: list[DeadLetter], scoring: asyncio.Future[Any],
        before: asyncio.Future[Any] | None, sealed: Sealed, events: Sequence[Any], now: datetime,
    ) -> None:  # fmt: skip
        """Write and send on a batch once the one taken before it is done; then its markers, and
        its messages are finished (so a crash before this point reads the batch again)."""
        if before is not None:
            await before
        await send_dead(dead, bad)
        scores, failed = await scoring
        by_id = {d.id: d for d in docs}
        pairs = [(by_id[s.document_id], s) for s in scores]
        refused = await ctx.write(pairs, persist_scored)
        failed += [storage_refused(e, d.to_json(), d.id, now) for (d, _), e in refused]
        refused_ids = {d.id for (d, _), _ in refused}
        await send_dead(dead, failed)
        _count_stored([d for d, _ in pairs if d.id not in refused_ids], len(docs))
        mentions: dict[int, list[Score]] = {}  # per partition of ``scored``, in order
        by_group: dict[int, list[Score]] = {}  # per partition of ``groups``
        for doc, score in pairs:
            if doc.id in refused_ids:
                continue
            grouped: dict[str, Score] = {}
            for mention in fan_out(score, doc):
                mentions.setdefault(partition_of(mention.ticker or ""), []).append(mention)
                for g in group_mentions(mention, sector_of, market):
                    grouped.setdefault(g.ticker or "", g)  # a document counts once per group
            for key, g in grouped.items():
                by_group.setdefault(partition_of(key), []).append(g)
        await send_scores(scored, mentions)
        await send_scores(groups, by_group)
        # after the batch's scores: everything up to these marks is sent
        await marks.send_sealed(sealed, outputs, fan_out=True)
        for event in events:
            event.ack()

    @app.agent(docs_topic, name="score")
    async def score_agent(stream: faust.StreamT[bytes]) -> None:
        # Batches in flight, oldest first: while one is written and sent on, the next ones are
        # scored (``ctx.scoring_depth``: in the scoring process, or in a thread; the event loop
        # goes on). Their messages are held (``incref``) until ``finish`` is done with them, in
        # the order taken.
        inflight: deque[asyncio.Future[None]] = deque()
        # documents come several to a message (``documents_per_message``): this many messages
        # make a batch of at most ``score_batch_size`` documents
        most = max(1, ctx.settings.score_batch_size // documents_per_message(ctx.settings))
        try:
            async for events in event_batches(stream, ctx.settings, most=most):
                now = datetime.now(UTC)
                touched = {e.message.partition for e in events}
                decoded, bad = decode_pairs([e for e in events if not is_marker(e.value)], Document,
                                            STAGE, now, batch=DOCUMENT_BATCH)  # fmt: skip
                times: dict[int, datetime] = {}  # per message: its newest document
                for e, d in decoded:
                    if id(e) not in times or d.published_at > times[id(e)]:
                        times[id(e)] = d.published_at
                for event in events:  # in order: a marker says what came before it in its partition
                    q = event.message.partition
                    if not is_marker(event.value):
                        marks.saw(q, times.get(id(event)))
                        continue
                    try:
                        upstream = Watermark.from_json(event.value)
                    except InvalidRecord:
                        continue
                    marks.saw(q, upstream.event_time)
                    if upstream.idle:
                        marks.saw_idle(q)
                docs = [d for _, d in decoded]
                scoring = asyncio.ensure_future(score_batch(ctx, docs, now))
                for event in events:
                    event.message.incref()
                before = inflight[-1] if inflight else None
                inflight.append(asyncio.ensure_future(
                    finish(docs, bad, scoring, before, marks.seal(touched), events, now)
                ))  # fmt: skip
                while inflight and (inflight[0].done() or len(inflight) >= ctx.scoring_depth):
                    await inflight.popleft()  # raises what finishing it raised
        finally:
            # the stream ended (the worker stops) or failed: finish the batches in flight while
            # the producer still runs; one that cannot finish is read again on the next start
            await settle(inflight, SETTLE_S)

    @app.timer(interval=0.1)
    async def send_held_back_marks() -> None:
        await marks.flush()

    async def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # partitions moved: new owners downstream need the markers again
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == ctx.topics.docs}
        marks.idle.clear()  # docs partitions are read again from their committed offsets
        await marks.resend(owned, outputs, fan_out=True)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

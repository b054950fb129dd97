"""raw.news + raw.social -> docs: validate, normalise, drop exact duplicates, link cashtags, and
cluster near-duplicates into stories. Documents go on as one ``documents/1`` message per docs
partition and batch (``batch_messages``), followed by the partition's watermark.

The story index is in the database (``storage.stories``): raw topics are keyed by each source's
item id, so one story's copies from different outlets reach different workers, and all of them
look in the same index; a restarted worker forgets nothing, and a redelivered record gets the
story it had.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import faust

from riskwire.exceptions import InvalidRecord
from riskwire.records import DOCUMENT_BATCH, DeadLetter, Document, RawRecord, join_batch
from riskwire.settings import Settings
from streams.context import WorkerContext, event_batches, send_dead
from streams.metrics import METRICS
from streams.pipeline import normalise
from streams.pipeline.stories import in_story
from streams.watermarks import RawProgress

log = logging.getLogger(__name__)
STAGE = "normalise"


def normalise_event(
    key: bytes | None, value: bytes, topic: str, now: datetime
) -> Document | DeadLetter:
    """One raw message -> a Document, or a DeadLetter saying why not. Never raises."""
    try:
        return normalise(RawRecord.from_json(value))
    except InvalidRecord as exc:
        reason = str(exc)
    except (
        Exception
    ) as exc:  # a bug must not lose the record: dead-letter it with the traceback text
        log.exception("unexpected error normalising a record from %s", topic)
        reason = f"unexpected {type(exc).__name__}: {exc}"
    return DeadLetter.of(STAGE, reason, value, occurred_at=now, topic=topic, key=key)


MESSAGE_BYTES = 512 * 1024  # documents per message up to this much (one alone may be more)


def documents_per_message(settings: Settings) -> int:
    """At most this many documents in a message, so that the scoring stage, taking as many
    messages as there are partitions, scores batches of at most ``score_batch_size``."""
    return max(1, settings.score_batch_size // settings.topic_partitions)


def batch_messages(bodies: list[bytes], most: int) -> list[bytes]:
    """Documents (JSON) as ``documents/1`` messages of at most ``most`` documents and
    ``MESSAGE_BYTES`` each, in order: one message per partition and batch unless the batch is
    large, well under the broker's 1 MB message limit (a document has at most 100,000 characters
    of text)."""
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for body in bodies:
        if chunk and (size + len(body) > MESSAGE_BYTES or len(chunk) >= most):
            out.append(join_batch(DOCUMENT_BATCH, chunk))
            chunk, size = [], 0
        chunk.append(body)
        size += len(body) + 1
    if chunk:
        out.append(join_batch(DOCUMENT_BATCH, chunk))
    return out


def register(app: faust.App, ctx: WorkerContext) -> None:
    raw = app.topic(ctx.topics.raw_news, ctx.topics.raw_social)
    docs = app.topic(ctx.topics.docs)
    dead = app.topic(ctx.topics.deadletter)

    progress = RawProgress(ctx.settings.topic_partitions, ctx.settings.reorder_idle_s)
    most = documents_per_message(ctx.settings)
    raw_topics = {ctx.topics.raw_news, ctx.topics.raw_social}

    @app.agent(raw, name="normalise")
    async def normalise_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in event_batches(stream, ctx.settings):
            now = datetime.now(UTC)
            results = [normalise_event(e.key, e.value, e.message.topic, now) for e in events]
            times = [r.published_at if isinstance(r, Document) else None for r in results]
            touched = progress.note(events, times)
            refused = [r for r in results if isinstance(r, DeadLetter)]
            await send_dead(dead, refused)
            fresh: list[tuple[Any, Document]] = []
            taken: set[str] = set()  # copies within the batch
            for event, doc in zip(events, results, strict=True):
                if isinstance(doc, Document) and doc.id not in taken and ctx.dedupe.is_new(doc.id):
                    taken.add(doc.id)
                    fresh.append((event, doc))
            METRICS.documents.labels(STAGE, "new").inc(len(fresh))
            METRICS.documents.labels(STAGE, "duplicate").inc(
                len(results) - len(refused) - len(fresh)
            )
            METRICS.documents.labels(STAGE, "dead").inc(len(refused))
            # near-duplicates: one story, in the index every worker shares
            stories = await ctx.assign_stories([doc for _, doc in fresh])
            by_partition: dict[int, list[bytes]] = {}
            for (event, doc), story in zip(fresh, stories, strict=True):
                # co-partitioned with the raw record, so each docs partition keeps the order
                # of its raw partition (the risk stage's watermarks rely on it)
                partition = event.message.partition % ctx.settings.topic_partitions
                by_partition.setdefault(partition, []).append(in_story(doc, story).to_json())
            for partition, bodies in sorted(by_partition.items()):
                for message in batch_messages(bodies, most):
                    await docs.send(value=message, partition=partition)
            ctx.dedupe.remember(taken)  # sent on: later copies are dropped
            await progress.send(touched, [docs], fan_out=False)

    @app.timer(interval=0.1)
    async def mark_idle_raw_partitions() -> None:
        assigned = [tp for tp in app.consumer.assignment() if tp.topic in raw_topics]
        quiet = await progress.newly_idle(app.consumer, assigned)
        if quiet:
            await progress.resend(quiet, [docs], fan_out=False)
        await progress.flush()

    async def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        progress.reassigned()
        owned = {
            tp.partition % ctx.settings.topic_partitions
            for tp in app.consumer.assignment()
            if tp.topic in raw_topics
        }
        # for the new owners downstream
        await progress.resend(owned, [docs], fan_out=False)

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

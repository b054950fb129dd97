"""raw.news + raw.social -> docs: validate, normalise, drop exact duplicates, link cashtags, and
cluster near-duplicates into stories.

The story index lives in this worker: copies that arrive at another worker (raw topics are keyed by
the source's item id) start stories of their own there.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import faust

from riskwire.exceptions import InvalidRecord
from riskwire.records import DeadLetter, Document, RawRecord
from streams.context import WorkerContext, event_batches, send_dead
from streams.pipeline import normalise
from streams.pipeline.stories import with_story

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


def register(app: faust.App, ctx: WorkerContext) -> None:
    raw = app.topic(ctx.topics.raw_news, ctx.topics.raw_social)
    docs = app.topic(ctx.topics.docs)
    dead = app.topic(ctx.topics.deadletter)

    @app.agent(raw, name="normalise")
    async def normalise_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in event_batches(stream, ctx.settings):
            now = datetime.now(UTC)
            results = [normalise_event(e.key, e.value, e.message.topic, now) for e in events]
            await send_dead(dead, [r for r in results if isinstance(r, DeadLetter)])
            for doc in results:
                if isinstance(doc, Document) and ctx.dedupe.is_new(doc.id):
                    doc = with_story(ctx.stories, doc)  # near-duplicates: one story
                    await docs.send(key=doc.id.encode(), value=doc.to_json())

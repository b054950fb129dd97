"""deadletter -> the dead_letters table, so operators can query what failed and why."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import faust

from riskwire.records import DeadLetter
from storage import repository
from streams.context import WorkerContext, decode_events, event_batches

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: WorkerContext) -> None:
    dead = app.topic(ctx.topics.deadletter)

    @app.agent(dead, name="deadletters")
    async def deadletter_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in event_batches(stream, ctx.settings):
            # what does not decode was written by something else: keep it, wrapped
            letters, unreadable = decode_events(events, DeadLetter, "deadletter", datetime.now(UTC))
            letters += unreadable
            for letter in letters:
                log.warning("dead letter at %s: %s", letter.stage, letter.reason)
            for letter, exc in await ctx.write(letters, repository.insert_dead_letters):
                log.error("dead letter %s could not be stored: %s", letter.id, exc)

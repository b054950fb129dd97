"""deadletter -> the dead_letters table, so operators can query what failed and why."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import faust

from riskwire.exceptions import InvalidRecord
from riskwire.records import DeadLetter
from storage import repository
from streams.context import WorkerContext, event_batches

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: WorkerContext) -> None:
    dead = app.topic(ctx.topics.deadletter)

    @app.agent(dead, name="deadletters")
    async def deadletter_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in event_batches(stream, ctx.settings):
            letters = []
            for event in events:
                try:
                    letters.append(DeadLetter.from_json(event.value))
                except InvalidRecord as exc:
                    # something else wrote to our dead-letter topic: keep it, wrapped
                    letters.append(
                        DeadLetter.of(
                            "deadletter",
                            f"unreadable dead letter: {exc}",
                            event.value,
                            occurred_at=datetime.now(UTC),
                            topic=event.message.topic,
                            key=event.key,
                        )
                    )
            for letter in letters:
                log.warning("dead letter at %s: %s", letter.stage, letter.reason)
            refused = await ctx.write(
                letters, repository.insert_dead_letters, "deadletter", lambda d: (d.key, d.payload)
            )
            for letter in refused:
                log.error("dead letter could not be stored: %s", letter.reason)

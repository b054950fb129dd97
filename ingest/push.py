"""The HTTP push endpoint for vendors that push: ``POST /ingest/{source}`` with an API key holding the
``ingest`` scope. The body is one JSON item, a JSON list of items, or NDJSON. Every item becomes a raw
record (source ``push:{source}``, fetch time = arrival, payload as sent) on the raw topic of its kind;
what cannot be a record goes to the dead-letter topic with the reason and is reported in the answer.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status

from ingest.base import SourceItem
from ingest.producer import PublishError, RawProducer
from riskwire.exceptions import BrokerError
from riskwire.records import DeadLetter, Kind, RawRecord
from riskwire.settings import Settings

MAX_ITEMS = 1000
MAX_BYTES = 10 * 1024 * 1024
STAGE = "ingest"
_SOURCE = re.compile(r"^[A-Za-z0-9._\-]{1,100}$")


def parse_items(body: bytes, content_type: str) -> list[Any]:
    """The items of a push body: a JSON object, a JSON list, or NDJSON (one item a line)."""
    text = body.decode("utf-8")
    if "ndjson" in content_type or "jsonl" in content_type:
        return [json.loads(line) if line.strip() else None for line in text.splitlines()]
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


def to_items(parsed: list[Any], source: str, kind: Kind, now: datetime) -> list[SourceItem]:
    items: list[SourceItem] = []
    for number, entry in enumerate(parsed):
        original = json.dumps(entry, ensure_ascii=False, default=str)[:1_000_000]
        if not isinstance(entry, dict):
            items.append(
                DeadLetter.of(STAGE, f"{source} item {number}: not a JSON object", original,
                              occurred_at=now, topic=source)
            )  # fmt: skip
            continue
        item_kind = entry.get("kind", kind.value)
        if item_kind not in (Kind.NEWS.value, Kind.SOCIAL.value):
            items.append(
                DeadLetter.of(STAGE, f"{source} item {number}: kind {item_kind!r} is not news or "
                              "social", original, occurred_at=now, topic=source)
            )  # fmt: skip
            continue
        items.append(RawRecord(source=source, kind=Kind(item_kind), fetched_at=now, payload=entry))
    return items


# how long a push waits for the broker to take its items before it is answered 503 (kafka-python's
# own defaults would hold the pusher's request for up to three minutes)
PUSH_TIMEOUT_MS = 15_000


def push_router(settings: Settings, require: Any) -> tuple[APIRouter, Callable[[], None]]:
    """The push route, and what closes its producer when the API stops."""
    router = APIRouter()
    lock = threading.Lock()
    producers: list[RawProducer] = []

    def producer() -> RawProducer:
        if settings.kafka_bootstrap is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "this API has no broker to push to (set RISKWIRE_KAFKA_BOOTSTRAP)",
            )
        with lock:
            if not producers:
                try:
                    made = RawProducer.for_settings(
                        settings, timeout_s=PUSH_TIMEOUT_MS / 1000, max_block_ms=PUSH_TIMEOUT_MS,
                        delivery_timeout_ms=PUSH_TIMEOUT_MS,
                        request_timeout_ms=PUSH_TIMEOUT_MS // 3,
                    )  # fmt: skip
                except BrokerError as exc:  # not reached, or refused this client: say why
                    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
                producers.append(made)
            return producers[0]

    @router.post("/ingest/{source}", status_code=202, tags=["ingest"])
    async def push(
        source: str,
        request: Request,
        kind: Annotated[Kind, Query(description="kind of items that do not say")] = Kind.NEWS,
        principal: Any = Depends(require("ingest")),
    ) -> dict[str, Any]:
        """Accept pushed items (a JSON object, a JSON list or NDJSON; at most 1,000 items and 10 MB)."""
        if not _SOURCE.match(source):
            raise HTTPException(422, "source must be 1-100 letters, digits, '.', '_' or '-'")
        body = await request.body()
        if len(body) > MAX_BYTES:
            raise HTTPException(413, f"a push carries at most {MAX_BYTES} bytes")
        try:
            parsed = parse_items(body, request.headers.get("content-type", ""))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPException(400, f"the body is not JSON or NDJSON: {exc}") from None
        if len(parsed) > MAX_ITEMS:
            raise HTTPException(413, f"a push carries at most {MAX_ITEMS} items")
        items = to_items(parsed, f"push:{source}", kind, datetime.now(UTC))
        # in a thread: a broker that does not answer holds its caller up to PUSH_TIMEOUT_MS, and
        # on the event loop that would hold every other request of the API (SSE, alerts) too
        target = await anyio.to_thread.run_sync(producer)
        try:
            counts = await anyio.to_thread.run_sync(target.publish, items)
        except PublishError as exc:  # nothing is acknowledged: the pusher sends them again
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; push the items again"
            ) from None
        rejected = [
            {"index": number, "reason": item.reason}
            for number, item in enumerate(items)
            if isinstance(item, DeadLetter)
        ]
        return {"accepted": counts.raw, "rejected": rejected}

    def close() -> None:
        for p in producers:
            p.close()

    return router, close

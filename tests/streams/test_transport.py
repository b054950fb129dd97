"""The worker's consumer: it fetches with the configured wait, not Faust's fixed 1500 ms, and its
commits never pass a message not processed, whatever a seek does."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from riskwire.broker import EmbeddedBroker
from riskwire.exceptions import SettingsError
from riskwire.settings import load_settings
from streams.app import create_app


def built_consumer_wait(data_dir: Path, **overrides: object) -> int:
    async def build() -> int:
        settings = load_settings(kafka_bootstrap="127.0.0.1:9", data_dir=data_dir, **overrides)
        app, context = create_app(settings)
        try:
            thread = app.consumer._thread  # type: ignore[attr-defined]
            consumer = thread._create_worker_consumer(app.transport)
            # what aiokafka hands its fetcher when the consumer starts
            wait = int(consumer._fetch_max_wait_ms)
            await consumer.stop()  # never started: nothing to close but the object
            return wait
        finally:
            context.close()

    return asyncio.run(build())


def test_the_fetch_wait_is_the_setting_not_fausts_fixed_one(tmp_path: Path) -> None:
    assert built_consumer_wait(tmp_path) == 100
    assert built_consumer_wait(tmp_path, kafka_fetch_wait_ms=1500) == 1500


def test_a_fetch_wait_out_of_range_is_refused() -> None:
    with pytest.raises(SettingsError, match="KAFKA_FETCH_WAIT_MS"):
        load_settings(kafka_fetch_wait_ms=0)


def test_the_commit_never_passes_an_offset_not_acknowledged(tmp_path: Path) -> None:
    from faust.types import TP

    from streams.transport import RiskwireApp

    async def check() -> None:
        app = RiskwireApp("commits", broker="kafka://127.0.0.1:9", datadir=tmp_path,
                          web_enabled=False, autodiscover=False, store="memory://")  # fmt: skip
        consumer = app.consumer
        tp = TP("scored", 0)
        consumer._committed_offset[tp] = 100
        consumer._acked[tp].extend(range(101, 111))  # 100 itself not processed yet
        assert consumer._new_offset(tp) is None  # Faust alone would commit 111
        await consumer._add_gap(tp, 111, 150)  # a seek used to turn offsets into such "gaps"
        assert not consumer._gap[tp]
        consumer._acked[tp].append(100)
        assert consumer._new_offset(tp) == 111

    asyncio.run(check())


def test_a_seek_back_while_a_fetch_is_delivered_redelivers_from_there(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Faust's fetcher went on with the records of the fetch under way and dropped the ones the
    seek fetched again: a seek from 1,023 back to 200 redelivered nothing."""
    from kafka import KafkaProducer

    from riskwire.broker import ensure_topics
    from streams.transport import RiskwireApp

    n, back = 3000, 200
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(n):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush()
    producer.close()
    seen: list[int] = []
    sought_at: list[int] = []

    async def run() -> None:
        app = RiskwireApp(f"seek-{topic}", broker=f"kafka://{broker.bootstrap}", datadir=tmp_path,
                          fetch_wait_ms=100, value_serializer="raw", key_serializer="raw",
                          topic_partitions=1, broker_session_timeout=6,
                          broker_heartbeat_interval=1, consumer_auto_offset_reset="earliest",
                          web_enabled=False, autodiscover=False, store="memory://",
                          stream_wait_empty=False, stream_buffer_maxsize=64)  # fmt: skip
        done = asyncio.Event()

        async def agent(stream: Any) -> None:
            async for events in stream.take_events(32, 0.2):
                seen.extend(e.message.offset for e in events)
                await asyncio.sleep(0.02)  # slower than the fetcher: its records wait in line
                if not sought_at and seen[-1] > 1000:
                    sought_at.append(len(seen))
                    await app.consumer.seek(events[-1].message.tp, back)
                if sought_at and seen[-1] == n - 1 and back in seen[sought_at[0] :]:
                    done.set()

        app.agent(app.topic(topic))(agent)
        await app.start()
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            pass
        finally:
            await app.stop()

    asyncio.run(run())
    assert sought_at, "the agent never got past offset 1000"
    after = seen[sought_at[0] :]
    assert back in after, f"nothing came again from {back}: {after[:3]}..{after[-3:]}"
    again = after[after.index(back) :]
    assert again == list(range(back, n))  # everything from there, once, in order

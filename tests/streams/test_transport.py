"""The worker's consumer: it fetches with the configured wait, not Faust's fixed 1500 ms, and its
commits never pass a message not processed, whatever a seek does."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
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


def produced(broker: EmbeddedBroker, n: int) -> str:
    """A new topic of one partition holding offsets 0..n-1."""
    from kafka import KafkaProducer

    from riskwire.broker import ensure_topics

    topic = f"offsets-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(n):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush()
    producer.close()
    return topic


def consumer_app(broker: EmbeddedBroker, topic: str, data_dir: Path) -> Any:
    """The worker's kind of app, with a stream buffer small enough to fill up."""
    from streams.transport import RiskwireApp

    return RiskwireApp(f"group-{topic}", broker=f"kafka://{broker.bootstrap}", datadir=data_dir,
                       fetch_wait_ms=100, value_serializer="raw", key_serializer="raw",
                       topic_partitions=1, broker_session_timeout=6, broker_heartbeat_interval=1,
                       consumer_auto_offset_reset="earliest", web_enabled=False,
                       autodiscover=False, store="memory://", stream_wait_empty=False,
                       stream_buffer_maxsize=64)  # fmt: skip


async def run_agent(
    app: Any, topic: str, agent: Callable[[Any], Awaitable[None]], done: asyncio.Event
) -> None:
    """Run ``agent`` on ``topic`` until ``done`` is set (at most 60 s), then stop the app."""
    app.agent(app.topic(topic))(agent)
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        pass  # the assertions say what did not come
    finally:
        await app.stop()


def delivered_around_a_seek(
    broker: EmbeddedBroker, data_dir: Path, n: int, past: int,
    seek: Callable[[Any, Any], Awaitable[None]], finish: bool = True,
) -> list[int]:  # fmt: skip
    """A slow agent reads a new topic of ``n`` offsets and, once past offset ``past``, calls
    ``seek(app, tp)``; it reads on until offset n - 1 comes after a repeat. The offsets delivered
    after the seek. ``finish=False``: nothing is acknowledged."""
    topic = produced(broker, n)
    seen: list[int] = []
    sought_at: list[int] = []
    app = consumer_app(broker, topic, data_dir)

    async def run() -> None:
        done = asyncio.Event()

        async def agent(stream: Any) -> None:
            async for events in stream.take_events(32, 0.2):
                if not finish:
                    for event in events:
                        event.message.incref()  # never finished: nothing committed
                seen.extend(e.message.offset for e in events)
                await asyncio.sleep(0.02)  # slower than the fetcher: its records wait in line
                if not sought_at and seen[-1] > past:
                    sought_at.append(len(seen))
                    await seek(app, events[-1].message.tp)
                after = seen[sought_at[0] :] if sought_at else []
                if (
                    after
                    and seen[-1] == n - 1
                    and any(b <= a for a, b in itertools.pairwise(after))
                ):
                    done.set()

        await run_agent(app, topic, agent, done)

    asyncio.run(run())
    assert sought_at, f"the agent never got past offset {past}"
    return seen[sought_at[0] :]


def test_a_seek_back_while_a_fetch_is_delivered_redelivers_from_there(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Faust's fetcher went on with the records of the fetch under way and dropped the ones the
    seek fetched again: a seek from 1,023 back to 200 redelivered nothing."""

    async def back_to_200(app: Any, tp: Any) -> None:
        await app.consumer.seek(tp, 200)

    after = delivered_around_a_seek(broker, tmp_path, 3000, 1000, back_to_200)
    assert 200 in after, f"nothing came again from 200: {after[:3]}..{after[-3:]}"
    assert after[after.index(200) :] == list(range(200, 3000))  # all from there, once, in order


def test_a_partition_with_no_committed_offset_is_sought_to_its_beginning(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """aiokafka seeks only partitions with a committed offset after an assignment: one without
    stayed where its fetcher was, past records fetched before the rebalance, never processed."""
    committed: list[int | None] = []

    async def as_after_a_rebalance(app: Any, tp: Any) -> None:
        await app.consumer.perform_seek()  # what Faust does after each assignment
        committed.append(app.consumer._committed_offset[tp])

    after = delivered_around_a_seek(broker, tmp_path, 300, 100, as_after_a_rebalance, finish=False)
    assert committed == [0]  # the commit starts there too
    assert 0 in after, f"nothing came again from the beginning: {after[:3]}..{after[-3:]}"
    assert after[after.index(0) :] == list(range(300))


def test_a_commit_held_by_a_message_never_processed_seeks_back_to_it(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Offsets acknowledged past one that never was: a path that dropped it. The commit holds
    there, never passes it, and after a while the partition is sought back to take it again."""
    from faust.types import TP

    n = 300
    topic = produced(broker, n)
    seen: list[int] = []
    committed: list[int | None] = []

    async def run() -> None:
        app = consumer_app(broker, topic, tmp_path)
        app.consumer.HOLE_WAIT_S = 1.0
        tp = TP(topic, 0)
        done = asyncio.Event()

        async def agent(stream: Any) -> None:
            async for events in stream.take_events(32, 0.2):
                for event in events:
                    if event.message.offset < 10 and event.message.offset not in seen:
                        event.message.incref()  # dropped the first time: never finished
                seen.extend(e.message.offset for e in events)

        async def watch() -> None:
            while not done.is_set():
                await asyncio.sleep(0.2)
                committed.append(app.consumer._committed_offset.get(tp))
                if committed[-1] == n:
                    done.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await run_agent(app, topic, agent, done)
        finally:
            watcher.cancel()

    asyncio.run(run())
    assert seen[:n] == list(range(n))
    # held at the first missing offset (0: no commit yet) until the seek back took it again
    assert all(c in (None, 0) for c in committed[: committed.index(n) if n in committed else None])
    assert seen[n:][:10] == list(range(10)), seen[n : n + 12]
    assert committed[-1] == n


def test_a_batch_cut_short_by_a_stopping_worker_is_not_committed(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Faust's take() acknowledges a batch however its loop body ended. A worker stopping (SIGTERM:
    Faust cancels its agents) while a body is still writing a batch had that batch's offsets
    committed unprocessed, and the next owner skipped it. ``event_batches`` holds each batch until
    its body is done, so the commit stops at the first offset of the batch cut short."""
    from kafka import KafkaAdminClient

    from streams.context import event_batches

    topic = produced(broker, 200)
    settings = load_settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp_path,
                             score_batch_size=32, score_batch_wait_s=0.2)  # fmt: skip
    app = consumer_app(broker, topic, tmp_path)
    cut: list[int] = []
    finished: list[int] = []

    async def run() -> None:
        done = asyncio.Event()

        async def agent(stream: Any) -> None:
            async for events in event_batches(stream, settings):
                if len(finished) >= 64:
                    cut.append(events[0].message.offset)
                    done.set()
                    await asyncio.sleep(3600)  # still writing when the worker stops
                finished.extend(e.message.offset for e in events)

        await run_agent(app, topic, agent, done)

    asyncio.run(run())
    assert cut and finished == list(range(cut[0])), "the batches did not come in order"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets({app.conf.id: None}).get(app.conf.id, {})
    finally:
        admin.close()
    committed = [o.offset for tp, o in offsets.items() if tp.topic == topic]
    # the stop committed what was finished, and nothing of the batch cut short
    assert committed == [cut[0]], f"committed {committed}, the cut batch began at {cut[0]}"

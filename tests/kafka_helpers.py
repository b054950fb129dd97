"""Test helpers on the real broker: read a topic, and wait until a consumer group has drained topics.

Tansu's ListOffsets(LATEST) is wrong for batched writes (KAFKA_NOTES.md), so end offsets are found by
reading the topic, never by asking for them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from riskwire.settings import Settings, load_settings


def read_topic(bootstrap: str, topic: str, idle_ms: int = 1500) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for message in read_topic(bootstrap, topic):
        tp = TopicPartition(topic, message.partition)
        ends[tp] = max(ends.get(tp, 0), message.offset + 1)
    return ends


def wait_drained(bootstrap: str, group: str, topics: Sequence[str], timeout: float = 120.0) -> None:
    """Wait until ``group`` has committed past the end of each topic, upstream first.

    Faust flushes its producer before it commits, so once a stage has committed its input, that
    stage's output is complete and the next topic's end is final.
    """
    deadline = time.monotonic() + timeout
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for topic in topics:
            ends = end_offsets(bootstrap, topic)
            while True:
                committed = admin.list_group_offsets({group: None}).get(group, {})
                behind = {
                    tp: end
                    for tp, end in ends.items()
                    if tp not in committed or committed[tp].offset < end
                }
                if not behind:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{group} still behind on {topic}: {behind}")
                time.sleep(0.5)
    finally:
        admin.close()


def stream_settings(
    prefix: str, bootstrap: str, database_url: str, data_dir: Path, **overrides: Any
) -> Settings:
    """Settings for a worker of this test's own: its topics and consumer group (``prefix`` and a
    random suffix) on the shared broker, its database, its data folder."""
    run = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap=bootstrap, database_url=database_url, data_dir=data_dir,
        topic_prefix=f"{prefix}-{run}", consumer_group=f"riskwire-{run}", **overrides,
    )  # fmt: skip

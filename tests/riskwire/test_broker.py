from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from riskwire.broker import EmbeddedBroker, port_open
from riskwire.exceptions import BrokerError


@pytest.mark.integration
def test_embedded_broker_serves_kafka_and_stops_cleanly() -> None:
    broker = EmbeddedBroker().start()
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send("t", key=b"k", value=b"hello").get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(
            "t",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )
        assert [m.value for m in consumer] == [b"hello"]
        consumer.close()
    finally:
        broker.stop()
    assert not broker.running
    assert not port_open("127.0.0.1", broker.port or 0)


@pytest.mark.integration
def test_a_taken_port_is_reported_not_trusted(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=broker.port).start()


def test_bootstrap_before_start_is_an_error() -> None:
    with pytest.raises(BrokerError, match="not been started"):
        _ = EmbeddedBroker().bootstrap


@pytest.mark.integration
def test_ensure_topics_creates_the_missing_ones_with_their_partitions(
    broker: EmbeddedBroker,
) -> None:
    import uuid

    from riskwire.broker import ensure_topics

    prefix = uuid.uuid4().hex[:8]
    names = [f"{prefix}.a", f"{prefix}.b"]
    assert ensure_topics(broker.bootstrap, names[:1], partitions=3) == names[:1]
    assert ensure_topics(broker.bootstrap, names, partitions=2) == names[1:]
    assert ensure_topics(broker.bootstrap, names, partitions=2) == []
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    partitions = {n: len(consumer.partitions_for_topic(n) or ()) for n in names}
    consumer.close()
    assert partitions == {names[0]: 3, names[1]: 2}


def test_partition_counts_the_stream_cannot_work_with_are_refused_and_unused_ones_reported() -> (
    None
):
    from riskwire.broker import partition_problems
    from riskwire.settings import Topics

    t = Topics("p")
    every = {name: 4 for name in t.all()}
    assert partition_problems(every, t, 4) == ([], [])
    assert partition_problems({}, t, 4) == ([], [])  # not made yet: made with 4
    # raw partitions beyond are folded onto docs partitions; alerts and dead letters go by key
    assert partition_problems({**every, t.raw_news: 8, t.alerts: 1, t.deadletter: 2}, t, 4) == (
        [], [])  # fmt: skip
    refused, unused = partition_problems({**every, t.raw_social: 2, t.scored: 3, t.docs: 6}, t, 4)
    assert refused == [
        "p.raw.social has 2 partitions, RISKWIRE_TOPIC_PARTITIONS=4: docs partitions 2..3 would "
        "have no source, and the risk stage would hold every score waiting for their watermarks",
        "p.scored has 3 partitions, RISKWIRE_TOPIC_PARTITIONS=4: the stream sends to its "
        "partitions 0..3",
    ]
    assert unused == ["partitions 4..5 of p.docs are never written (RISKWIRE_TOPIC_PARTITIONS=4)"]


@pytest.mark.integration
def test_a_worker_refuses_topics_made_with_fewer_partitions_than_it_addresses(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Topics that exist keep their partition count whatever RISKWIRE_TOPIC_PARTITIONS says. With
    two where the worker addresses four, it crashed on Faust's "Unrecognized partition" and
    stored nothing; now it does not start, and says why."""
    import uuid

    from riskwire.broker import check_partitions, ensure_topics
    from riskwire.settings import Topics
    from tests.riskwire.test_cli import riskwire

    topics = Topics(f"few-{uuid.uuid4().hex[:8]}")
    ensure_topics(broker.bootstrap, topics.all(), partitions=2)  # made by hand, say
    env = {
        "RISKWIRE_KAFKA_BOOTSTRAP": broker.bootstrap, "RISKWIRE_TOPIC_PREFIX": topics.prefix,
        "RISKWIRE_DATA_DIR": str(tmp_path / "data"),
    }  # fmt: skip
    result = riskwire("worker", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    out = " ".join(result.stdout.split())
    assert f"{topics.docs} has 2 partitions, RISKWIRE_TOPIC_PARTITIONS=4" in out
    assert f"{topics.raw_news} has 2 partitions" in out
    # the same topics with the setting that matches them
    assert check_partitions(broker.bootstrap, topics, 2) == []
    assert check_partitions(broker.bootstrap, topics, 1) == [
        f"partitions 1..1 of {name} are never written (RISKWIRE_TOPIC_PARTITIONS=1)"
        for name in (topics.docs, topics.scored, topics.groups)
    ]

from __future__ import annotations

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

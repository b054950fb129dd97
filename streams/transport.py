"""The worker's Kafka transport: Faust's aiokafka driver, with the fetch wait a setting.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no way to change it. Against
Apache Kafka that costs nothing (a fetch returns as soon as ``fetch_min_bytes`` of records are
there), but the embedded Tansu broker holds a fetch for its whole wait when nothing was there when
it came, even if records arrive meanwhile (measured with aiokafka here: a record published to an
idle topic reached its consumer after 483 ms at the median with a 1500 ms wait, 108 ms with 500 ms,
12 ms with 100 ms). A worker has three such hops (raw -> docs -> scored/groups), and each stage
batches, so the wait was most of a document's way from publish to its risk row.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as driver

log = logging.getLogger(__name__)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_wait_ms", None)
        # aiokafka keeps the argument here and hands it to its fetcher when it starts
        if wait_ms is not None and hasattr(consumer, "_fetch_max_wait_ms"):
            consumer._fetch_max_wait_ms = wait_ms
        elif wait_ms is not None:
            log.warning("this aiokafka has no _fetch_max_wait_ms: fetches wait Faust's 1500 ms")
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer: ClassVar[Any] = _Consumer


class RiskwireApp(faust.App):
    """A Faust app whose consumer fetches with ``fetch_wait_ms`` (``kafka_fetch_wait_ms``)."""

    def __init__(self, *args: Any, fetch_wait_ms: int | None = None, **kwargs: Any) -> None:
        self.fetch_wait_ms = fetch_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

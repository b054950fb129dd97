"""The worker's consumer fetches with the configured wait, not Faust's fixed 1500 ms."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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

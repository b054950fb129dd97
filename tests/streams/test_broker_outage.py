"""A broker that stops answering for a while mid-stream (frozen with SIGSTOP: what a network
partition, a long pause or a broker being moved looks like to the worker) changes nothing: every
stored result is as in an uninterrupted run, and no alert goes out twice.

The risk stage used to release the scores it held once nothing had come for ``20 x
reorder_idle_s``; when the broker came back, the earlier documents still upstream came after them,
and rolling rows were computed without them (67 of 4,000 here, with a 100 s freeze and the
default settings' 40 s). The freeze here outlasts that span by half (the settings shortened), with
a backlog: the worker has stored about a third of the corpus when the broker freezes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from riskwire.broker import EmbeddedBroker
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import upgrade
from storage.engine import fresh_database
from tests.streams.test_crash import (
    assert_as_uninterrupted,
    drain,
    publish,
    rows_stored,
    settings_for,
    snapshot,
    wait_until,
    write_corpus,
)  # fmt: skip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 4000
IDLE_S = 0.5  # the risk stage used to release what it held after 20 x this: 10 s
FREEZE_S = 15.0


def run(broker: EmbeddedBroker, url: str, corpus: Path, data_dir: Path, freeze: bool) -> Settings:
    """The corpus through one worker, the broker frozen for ``FREEZE_S`` mid-stream if asked."""
    upgrade(url)
    settings = settings_for(broker, url, data_dir, reorder_idle_s=IDLE_S)
    worker = spawn_worker(settings, data_dir / "worker.log")
    try:
        publish(settings, corpus, N)
        if freeze:
            stored = rows_stored(url)
            wait_until(lambda: stored() >= N * 0.3, worker)
            pid = broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(FREEZE_S)
                assert worker.poll() is None, "the worker died while the broker was away"
            finally:
                os.kill(pid, signal.SIGCONT)
            assert stored() < N, "the freeze came too late to test anything"
        drain(settings)
    finally:
        assert stop_worker(worker) == 0
    return settings


def test_a_broker_that_stops_answering_mid_stream_changes_nothing(
    broker: EmbeddedBroker, postgres_admin_url: str, postgres_url: str, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, N)
    calm, frozen = tmp_path / "calm", tmp_path / "frozen"
    calm.mkdir()
    frozen.mkdir()
    with fresh_database(postgres_admin_url) as url:
        run(broker, url, corpus, calm, freeze=False)
        want: dict[str, list[Any]] = snapshot(url)
    assert len(want["documents"]) == N and want["alerts"]

    with EmbeddedBroker() as own:  # frozen: the session's broker serves other tests
        settings = run(own, postgres_url, corpus, frozen, freeze=True)
        assert_as_uninterrupted(settings, postgres_url, want, frozen)
    log = (frozen / "worker.log").read_text(errors="replace")
    assert "out of event-time order so far" not in log
    assert "nothing received for" in log  # the stall was reported, its scores held

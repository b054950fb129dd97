"""Pauses mid-stream change nothing: every stored result is as in an uninterrupted run, and no
alert goes out twice.

- **The broker stops answering** (frozen with SIGSTOP: what a network partition, a long pause or
  a broker being moved looks like to a worker). The risk stage used to release the scores it
  held once nothing had come for ``20 x reorder_idle_s``; when the broker came back, the earlier
  documents still upstream came after them, and rolling rows were computed without them (67 of
  4,000 with a 100 s freeze and the default settings' 40 s). The freeze here outlasts that span by
  half (the idle setting shortened).
- **A worker is paused past its session** (SIGSTOP: a stop-the-world pause, a VM migration) while
  another shares the work: it is put out of the group and the other takes its partitions over;
  when it wakes it finishes what it was doing before it hears. Its late writes of aggregates put
  older values back over the new owner's (hour windows stored with 1 document of their 7) until
  each partition's results were fenced (``storage.fences``).

Both with a backlog: the pause comes once about a third of the corpus is stored.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
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
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 8000
IDLE_S = 0.5  # the risk stage used to release what it held after 20 x this: 10 s
PAUSE_S = 15.0  # a worker's session is 6 s


def paused(process_id: int, wait: Any = None) -> None:
    """SIGSTOP ``process_id`` for ``PAUSE_S``, then SIGCONT it (whatever happens meanwhile)."""
    os.kill(process_id, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
        if wait is not None:
            wait()
    finally:
        os.kill(process_id, signal.SIGCONT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pauses") / "corpus.jsonl"
    write_corpus(path, N)
    return path


@pytest.fixture(scope="module")
def uninterrupted(
    broker: EmbeddedBroker, postgres_admin_url: str, corpus: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, list[Any]]]:  # fmt: skip
    data_dir = tmp_path_factory.mktemp("calm")
    with fresh_database(postgres_admin_url) as url:
        upgrade(url)
        settings = settings_for(broker, url, data_dir, reorder_idle_s=IDLE_S)
        worker = spawn_worker(settings, data_dir / "worker.log")
        try:
            publish(settings, corpus, N)
            drain(settings)
        finally:
            assert stop_worker(worker) == 0
        result = snapshot(url)
    assert len(result["documents"]) == N and result["alerts"]
    yield result


def start(broker: EmbeddedBroker, url: str, corpus: Path, data_dir: Path, workers: int) -> Any:
    upgrade(url)
    settings = settings_for(broker, url, data_dir, reorder_idle_s=IDLE_S)
    spawned = [spawn_worker(settings, data_dir / f"worker-{n}.log") for n in range(workers)]
    publish(settings, corpus, N)
    stored = rows_stored(url)
    wait_until(lambda: stored() >= N * 0.3, *spawned)
    return settings, stored, spawned


def stop(workers: list[Any]) -> None:
    codes = [stop_worker(w) for w in workers]
    assert codes == [0] * len(workers)


def test_a_broker_that_stops_answering_mid_stream_changes_nothing(
    postgres_url: str, corpus: Path, tmp_path: Path, uninterrupted: dict[str, list[Any]]
) -> None:
    with EmbeddedBroker() as own:  # frozen: the session's broker serves other tests
        settings, stored, workers = start(own, postgres_url, corpus, tmp_path, 1)
        try:
            assert own.pid is not None
            paused(own.pid, wait=lambda: workers[0].poll() is None or pytest.fail("worker died"))
            assert stored() < N, "the freeze came too late to test anything"
            drain(settings)
        finally:
            stop(workers)
        assert_as_uninterrupted(settings, postgres_url, uninterrupted, tmp_path)
    log = (tmp_path / "worker-0.log").read_text(errors="replace")
    assert "out of event-time order so far" not in log
    assert "nothing received for" in log  # the stall was reported, its scores held


def test_a_worker_paused_past_its_session_writes_nothing_over_its_successor(
    broker: EmbeddedBroker, postgres_url: str, corpus: Path, tmp_path: Path,
    uninterrupted: dict[str, list[Any]],
) -> None:  # fmt: skip
    settings: Settings
    settings, _, workers = start(broker, postgres_url, corpus, tmp_path, 2)
    try:
        paused(workers[0].pid)
        drain(settings)
    finally:
        stop(workers)
    assert_as_uninterrupted(settings, postgres_url, uninterrupted, tmp_path)
    log = (tmp_path / "worker-0.log").read_text(errors="replace")
    assert "re-joining group" in log  # it was put out of the group while it slept

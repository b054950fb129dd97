"""The worker's ensemble in a process of its own: it scores exactly as in the worker's process,
is started again when it dies, and never outlives its worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.exceptions import ModelError
from models.factory import make_ensemble
from riskwire.records import Score
from riskwire.settings import load_settings
from streams.inference import RemoteScorer
from streams.pipeline import score_documents
from tests.factories import make_document

TITLES = [
    "Acme shares plunge after profit warning and fraud probe",
    "Acme raises its dividend after record quarterly profit",
    "Acme holds its annual meeting in Denver",
    "Regulators fine Acme over misleading disclosures",
]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state  # exited, waiting to be reaped by whoever adopted it


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(data_dir=tmp_path, ensemble_members="finlex:1,lm:1")


def test_the_scoring_process_scores_as_the_worker_would(settings) -> None:  # type: ignore[no-untyped-def]
    docs = [make_document(id=f"d{i}", title=t, text="") for i, t in enumerate(TITLES)]
    local = make_ensemble(settings)
    scorer = RemoteScorer(settings).load()
    try:
        remote = asyncio.run(scorer.score(docs))
    finally:
        scorer.close()
    assert scorer.version == local.version
    assert scorer.registry_entries() == local.registry_entries()
    assert remote == score_documents(local, docs)
    assert len({s.label for s in remote}) > 1  # not one answer for everything


def test_a_scoring_process_that_dies_is_started_again(settings) -> None:  # type: ignore[no-untyped-def]
    docs = [make_document(id="d0", title=TITLES[0], text="")]
    scorer = RemoteScorer(settings).load()
    try:
        first = scorer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        async def two_in_flight() -> list[list[Score]]:
            return list(await asyncio.gather(scorer.score(docs), scorer.score(docs)))

        for scores in asyncio.run(two_in_flight()):
            assert [s.document_id for s in scores] == ["d0"] and scores[0].label == "negative"
        assert scorer.pid not in (None, first)
    finally:
        scorer.close()


def test_models_that_cannot_load_say_why(tmp_path: Path) -> None:
    scorer = RemoteScorer(load_settings(data_dir=tmp_path, ensemble_members="no-such-member:1"))
    try:
        with pytest.raises(ModelError, match="no-such-member"):
            scorer.load()
    finally:
        scorer.close()


CHILD = """
import sys, time
from riskwire.records import Score
from riskwire.settings import load_settings
from streams.inference import RemoteScorer
scorer = RemoteScorer(load_settings(data_dir=sys.argv[1], ensemble_members="finlex:1")).load()
print(scorer.pid, flush=True)
time.sleep(60)
"""


def test_the_scoring_process_goes_with_its_worker_even_on_sigkill(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        assert not gone(pid)
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(pid), "the scoring process outlived its worker"
    finally:
        worker.kill()

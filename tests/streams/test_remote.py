"""The scoring process: the same answers as the ensemble in this process, several batches at once,
errors with their reason, a replacement for a child that dies, and no child left by a dead worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.exceptions import ModelError
from models.factory import make_ensemble
from riskwire.settings import Settings, load_settings
from streams.remote import RemoteScorer, ScorerDied

TEXTS = [
    "Shares plunge after a profit warning and a fraud probe",
    "The company beats estimates and raises its dividend",
    "The annual meeting is held on Tuesday",
    "Losses widen; the outlook is cut as demand collapses " * 40,
]
KEYS = [("news", "en")] * len(TEXTS)


def lexicon_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, ensemble_members="lm:1,finvader:1")


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[RemoteScorer]:
    scorer = RemoteScorer(lexicon_settings(tmp_path), threads=2)
    yield scorer
    scorer.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has gone
    except FileNotFoundError:
        return False


def test_answers_what_the_ensemble_answers_here(remote: RemoteScorer, tmp_path: Path) -> None:
    here = make_ensemble(lexicon_settings(tmp_path))
    assert remote.version == here.version
    assert remote.registry_entries() == here.registry_entries()
    expected = here.judge_routed(TEXTS, KEYS)
    assert remote.judge_routed(TEXTS, KEYS) == expected
    assert {j.label for j in expected} >= {"negative", "positive"}  # a real ensemble's answers
    with ThreadPoolExecutor(6) as pool:  # several batches in flight, each back to its caller
        batches = [TEXTS[k:] + TEXTS[:k] for k in range(len(TEXTS))] * 3
        answers = list(pool.map(lambda b: remote.judge_routed(b, KEYS), batches))
    assert answers == [expected[k:] + expected[:k] for k in range(len(TEXTS))] * 3


def test_a_batch_that_fails_says_why_and_the_process_goes_on(remote: RemoteScorer) -> None:
    with pytest.raises(ModelError, match="Error") as failed:
        remote.judge_routed([None], KEYS[:1])  # type: ignore[list-item]
    assert not isinstance(failed.value, ScorerDied)
    pid = remote.pid
    assert len(remote.judge_routed(TEXTS, KEYS)) == len(TEXTS)
    assert remote.pid == pid and remote.restarts == 0


def test_a_child_that_dies_fails_its_batches_and_is_replaced(remote: RemoteScorer) -> None:
    expected = remote.judge_routed(TEXTS, KEYS)
    first = remote.pid
    assert first is not None
    with ThreadPoolExecutor(3) as pool:
        big = [TEXTS * 200] * 3  # long enough to be in hand when the child is killed
        futures = [pool.submit(remote.judge_routed, b, KEYS * 200) for b in big]
        time.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        for future in futures:
            with pytest.raises(ScorerDied, match="killed by signal 9"):
                future.result()
    assert remote.judge_routed(TEXTS, KEYS) == expected  # a fresh child
    assert remote.restarts == 1 and remote.pid not in (None, first)
    assert not alive(first)


def test_models_that_cannot_load_are_refused_with_the_reason(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, ensemble_members="nosuch:1")
    with pytest.raises(ModelError, match=r"could not load the models.*unknown member 'nosuch'"):
        RemoteScorer(settings)


def test_close_ends_the_child(tmp_path: Path) -> None:
    scorer = RemoteScorer(lexicon_settings(tmp_path))
    pid = scorer.pid
    assert pid is not None and alive(pid)
    scorer.close()
    assert not alive(pid)
    with pytest.raises(ModelError, match="closed"):  # and no new child is started
        scorer.judge_routed(TEXTS, KEYS)
    assert scorer.pid is None and scorer.restarts == 0


def test_a_worker_killed_outright_leaves_no_scoring_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from riskwire.settings import load_settings
        from streams.remote import RemoteScorer
        scorer = RemoteScorer(load_settings(data_dir={str(tmp_path)!r},
                                            ensemble_members="lm:1,finvader:1"))
        print(scorer.pid, flush=True)
        time.sleep(600)
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert alive(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child)
    finally:
        worker.kill()
        worker.wait()


def test_a_child_that_cannot_start_again_is_waited_for_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Like a database that is down: the batch waits (and its input in Kafka) until models load."""
    monkeypatch.setattr("streams.remote.RESTART_DELAY_S", 0.2)
    monkeypatch.setattr("streams.remote.RESTART_DELAY_MAX_S", 0.4)
    spec = tmp_path / "lexicons.json"
    spec.write_text(json.dumps({"name": "lexicons", "members": [{"member": "lm"}]}))
    scorer = RemoteScorer(load_settings(data_dir=tmp_path, ensemble=str(spec)))
    try:
        expected = scorer.judge_routed(TEXTS, KEYS)
        saved = spec.read_text()
        spec.unlink()  # the models cannot load any more
        first = scorer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        while scorer.pid is not None:  # seen to go: the next batch starts a child
            time.sleep(0.05)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(scorer.judge_routed, TEXTS, KEYS)
            deadline = time.monotonic() + 30
            while scorer.restarts < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert scorer.restarts >= 3 and not answer.done()  # tried, failed, still waiting
            spec.write_text(saved)
            assert answer.result(timeout=60) == expected
        assert "could not load the models" in caplog.text
    finally:
        scorer.close()


def test_changed_models_are_loaded_beside_the_running_ones_and_take_over_between_batches(
    tmp_path: Path,
) -> None:
    """A refit promoted while the worker runs: the new child loads while the old one scores; a
    batch already out is answered by the old models under their version, the next ones by the
    new; the old child ends. The same files again, or files that cannot load, change nothing."""
    spec = tmp_path / "lexicons.json"
    members = [{"member": "lm"}, {"member": "finvader"}]
    spec.write_text(json.dumps({"name": "lexicons", "members": members}))
    settings = load_settings(data_dir=tmp_path, ensemble=str(spec))
    before = make_ensemble(settings)
    scorer = RemoteScorer(settings)
    try:
        first = scorer.pid
        assert first is not None and scorer.version == before.version
        assert scorer.reload() is None and scorer.pid == first  # nothing changed
        spec.write_text(json.dumps({"name": "lexicons", "members": [members[0] | {"weight": 3.0},
                                                                    members[1]]}))  # fmt: skip
        after = make_ensemble(settings)
        assert after.version != before.version
        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(scorer.judge_versioned, TEXTS * 600, KEYS * 600)  # in hand meanwhile
            time.sleep(0.1)
            assert scorer.reload() == after.version
            assert not out.done()  # the swap came while the batch was out (it takes seconds)
            version, judgements = out.result()
        assert version == before.version  # answered by the models that were scoring
        assert judgements == before.judge_routed(TEXTS * 600, KEYS * 600)
        assert scorer.judge_versioned(TEXTS, KEYS) == (
            after.version,
            after.judge_routed(TEXTS, KEYS),
        )
        assert scorer.version == after.version and scorer.reloads == 1
        assert scorer.registry_entries() == after.registry_entries()
        deadline = time.monotonic() + 20
        while alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first) and scorer.pid != first

        spec.write_text("{half a file")
        with pytest.raises(ModelError, match="could not load the models"):
            scorer.reload()
        assert scorer.judge_versioned(TEXTS, KEYS)[0] == after.version  # the running ones go on
        assert scorer.restarts == 0
    finally:
        scorer.close()


def test_a_child_started_again_after_a_death_takes_on_models_changed_meanwhile(
    tmp_path: Path,
) -> None:
    """With reloading on, a replacement child that finds new models scores with them (and says
    which) instead of holding the stream until a restart."""
    spec = tmp_path / "lexicons.json"
    spec.write_text(json.dumps({"name": "lexicons", "members": [{"member": "lm"}]}))
    settings = load_settings(data_dir=tmp_path, ensemble=str(spec), model_reload_s=30)
    scorer = RemoteScorer(settings)
    try:
        first = scorer.pid
        assert first is not None
        spec.write_text(json.dumps({"name": "lexicons", "members": [{"member": "finvader"}]}))
        after = make_ensemble(settings)
        os.kill(first, signal.SIGKILL)
        while scorer.pid is not None:  # seen to go
            time.sleep(0.05)
        assert scorer.judge_versioned(TEXTS, KEYS) == (
            after.version,
            after.judge_routed(TEXTS, KEYS),
        )
        assert (scorer.restarts, scorer.reloads, scorer.version) == (1, 1, after.version)
        assert scorer.registry_entries() == after.registry_entries()
    finally:
        scorer.close()

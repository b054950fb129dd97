from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from riskwire.broker import EmbeddedBroker, port_open


def riskwire(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
):
    return subprocess.run(
        [sys.executable, "-m", "riskwire", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def test_help_lists_the_commands() -> None:
    result = riskwire("--help")
    assert result.returncode == 0
    for command in ("broker", "db", "worker", "ingest", "demo", "models"):
        assert command in result.stdout


def test_invalid_settings_stop_start_up_naming_the_setting(tmp_path: Path) -> None:
    result = riskwire("db", "upgrade", env={"RISKWIRE_SCORE_BATCH_SIZE": "-3"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "RISKWIRE_SCORE_BATCH_SIZE" in result.stdout


def test_db_upgrade_creates_the_sqlite_database(tmp_path: Path) -> None:
    result = riskwire(
        "db", "upgrade", env={"RISKWIRE_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "riskwire.db").stat().st_size > 0


def test_worker_without_a_broker_says_what_to_do(tmp_path: Path) -> None:
    result = riskwire("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "RISKWIRE_KAFKA_BOOTSTRAP is not set" in result.stdout


def _workers_and_brokers() -> set[int]:
    found = subprocess.run(
        ["pgrep", "-f", "riskwire worker|tansu broker"], capture_output=True, text=True
    )
    return {int(pid) for pid in found.stdout.split()}


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_no_process_behind(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    before = _workers_and_brokers()
    result = riskwire(
        "demo",
        "--sample",
        str(fixtures_dir / "pipeline.jsonl"),
        "--timeout",
        "120",
        env={"RISKWIRE_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
        timeout=180,  # longer than the demo's own, so the demo stops its worker and broker itself
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "12 documents stored, 6 dead letters" in out
    doom = next(line for line in out.splitlines() if "DOOM" in line and "│" in line)
    assert doom.split("│")[4].strip() == "1"  # the ticker row shows its alert
    assert "negative_surge DOOM (firing)" in out
    assert f"data: sqlite:///{tmp_path / 'data' / 'riskwire.db'}" in out
    assert _workers_and_brokers() <= before


@pytest.mark.integration
def test_broker_command_serves_until_terminated(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "riskwire", "broker"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = ""
        while "RISKWIRE_KAFKA_BOOTSTRAP=" not in line:
            line = process.stdout.readline()
            assert line, "the broker command exited without printing its address"
        bootstrap = line.strip().rsplit("=", 1)[1]
        host, port = bootstrap.split(":")
        assert port_open(host, int(port))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == 0
    assert not port_open(host, int(port))


@pytest.mark.integration
def test_check_says_what_the_settings_reach_and_what_is_wrong_changing_nothing(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path
) -> None:
    import uuid

    from riskwire.broker import ensure_topics, free_port
    from riskwire.settings import Topics
    from storage import upgrade

    topics = Topics(f"chk-{uuid.uuid4().hex[:8]}")
    env = {"RISKWIRE_KAFKA_BOOTSTRAP": broker.bootstrap, "RISKWIRE_TOPIC_PREFIX": topics.prefix,
           "RISKWIRE_DATABASE_URL": sqlite_url}  # fmt: skip
    # nothing made yet: the topics are missing (made by the first worker), the database too
    fresh = riskwire("check", env=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert f"{topics.docs}: missing" in fresh.stdout and "does not exist yet" in fresh.stdout
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # changed nothing
    ensure_topics(broker.bootstrap, topics.all(), 4)
    upgrade(sqlite_url)
    good = riskwire("check", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"{topics.scored}: 4 partitions" in good.stdout
    assert "connects; migrations up to date" in good.stdout
    # a worker started with 8 would address partitions these topics do not have
    wrong = riskwire("check", env={**env, "RISKWIRE_TOPIC_PARTITIONS": "8"}, cwd=tmp_path)
    assert wrong.returncode == 1
    assert f"refused: {topics.docs} has 4 partitions" in " ".join(wrong.stdout.split())
    # a cluster and a database that are not there: each says why
    gone = riskwire(
        "check", "--timeout", "2", cwd=tmp_path,
        env={**env, "RISKWIRE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
             "RISKWIRE_DATABASE_URL": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x"},
    )  # fmt: skip
    assert gone.returncode == 1
    out = " ".join(gone.stdout.split())
    assert "does not answer" in out and "cannot connect" in out
    assert "database: postgresql+psycopg://u@127.0.0.1" in out and "OperationalError" in out

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def riskwire(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "riskwire", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
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

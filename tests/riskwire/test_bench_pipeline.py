"""``riskwire bench pipeline``: one JSON object with its figures, and where the CPU went (real
processes measured, not assumed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.endtoend import CpuMeter
from tests.riskwire.test_cli import riskwire

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
WORKER = (
    "import subprocess, sys, time\n"
    "time.sleep(0.5)\n"
    + BURN.format(s=0.4)
    + "child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
    "time.sleep(30)\n"
)


def test_the_meter_counts_a_worker_and_its_scoring_process_apart() -> None:
    child = BURN.format(s=0.4) + "time.sleep(30)\n"
    worker = subprocess.Popen([sys.executable, "-c", WORKER.format(child=child)])
    try:
        meter = CpuMeter(worker.pid, None, None)
        before = meter.read()
        deadline = time.monotonic() + 30
        while meter.read()["scoring"] < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = meter.read()
    finally:
        for process in psutil.Process(worker.pid).children(recursive=True):
            process.kill()
        worker.kill()
        worker.wait()
    spent = {k: after[k] - before[k] for k in after}
    assert spent["worker"] >= 0.35 and spent["scoring"] >= 0.4  # each its own burn
    assert spent["worker"] < 0.8 and spent["scoring"] < 0.8  # and not the other's
    assert after["broker"] == 0.0 and "database" not in after  # no broker given; SQLite
    assert CpuMeter.per_document({"worker": 1.0}, {"worker": 3.0}, 1000, 4.0) == (
        {"worker": 2.0},
        0.5,
    )


def test_a_local_postgresql_server_is_measured_and_a_remote_one_is_not() -> None:
    assert CpuMeter(1, None, "postgresql+psycopg://postgres@127.0.0.1:5432/test").postgres_here
    assert not CpuMeter(1, None, "postgresql+psycopg://postgres@db.example:5432/x").postgres_here
    assert not CpuMeter(1, None, None).postgres_here


@pytest.mark.slow
@pytest.mark.integration
def test_bench_pipeline_prints_one_json_object_with_where_the_cpu_went(tmp_path: Path) -> None:
    result = riskwire(
        "bench", "pipeline", "--documents", "300", "--rate", "20", "--seconds", "2", "--json",
        env={"RISKWIRE_DATA_DIR": str(tmp_path), "RISKWIRE_LOG_LEVEL": "warning"}, cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["database"] == "sqlite" and figures["documents"] == 300
    for model in ("null", "default"):
        run = figures[model]
        assert run["docs_per_s"] > 0 and run["latency_p50_s"] <= run["latency_p99_s"]
        assert run["cpu_ms_per_doc"]["worker"] > 0 and run["cores_busy"] > 0
    # the models run in the scoring process: there, not in the worker, is where they cost
    assert (
        figures["default"]["cpu_ms_per_doc"]["scoring"]
        > figures["null"]["cpu_ms_per_doc"]["scoring"]
    )
    assert figures["default"]["alerts"] >= 1  # the bursts are seen as negative
    assert figures["ensemble_cpu_ms_per_doc"] > 0
    assert figures["pipeline_over_ensemble"] == pytest.approx(
        figures["default"]["docs_per_s"] / figures["ensemble_docs_per_s"], abs=0.002
    )

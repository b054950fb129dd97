"""``riskwire replay`` / ``backfill`` / ``bench replay`` as a user runs them: real processes, a real
SQLite database seeded by the live pipeline functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from riskwire.settings import load_settings
from storage import make_engine, session_factory, upgrade
from tests.replay_helpers import lexicon_ensemble, run_live, world
from tests.riskwire.test_cli import riskwire

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'riskwire.db'}"
    upgrade(url)
    settings = load_settings(database_url=url, data_dir=data)
    run_live(session_factory(make_engine(url)), settings, lexicon_ensemble(), world())
    return {"RISKWIRE_DATA_DIR": str(data), "RISKWIRE_LOG_LEVEL": "warning"}


def test_replay_runs_a_period_and_the_job_can_be_listed_and_reported(
    env: dict[str, str], tmp_path: Path
) -> None:
    version = lexicon_ensemble().version
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: negative_surge\n    min_documents: 4\n")
    result = riskwire(
        "replay", "--from", "2026-03-02", "--to", "2026-03-04T00:00:00Z",
        "--model-version", version, "--rules", str(rules), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matched" in result.stdout and "label agreement" in result.stdout
    assert ": done" in result.stdout
    job = next(w for w in result.stdout.split() if w.startswith("replay-"))

    status = riskwire("replay", "status", env=env, cwd=tmp_path)
    assert status.returncode == 0 and job in status.stdout and "432/432" in status.stdout

    report = riskwire("replay", "report", job, "--json", env=env, cwd=tmp_path)
    data = json.loads(report.stdout)
    assert data["alert_counts"] == {
        "run": 3,
        "baseline": 3,
        "matched": 3,
        "shifted": 0,
        "gained": 0,
        "lost": 0,
    }
    assert Path(data["plot"]).is_file()

    compare = riskwire("replay", "compare", "live", job, env=env, cwd=tmp_path)
    assert compare.returncode == 0 and "matched" in compare.stdout


def test_replay_errors_are_one_clear_line_and_exit_code_2(
    env: dict[str, str], tmp_path: Path
) -> None:
    backwards = riskwire("replay", "--from", "2026-03-04", "--to", "2026-03-02", env=env)
    assert backwards.returncode == 2 and "is not before" in backwards.stdout
    bad_time = riskwire("replay", "--from", "last tuesday", "--to", "2026-03-02", env=env)
    assert bad_time.returncode == 2 and "not an ISO-8601 time" in bad_time.stdout
    archive = tmp_path / "archive.jsonl"
    archive.write_text(
        json.dumps({"kind": "news", "source": "a", "title": "Acme beats estimates",
                    "published_at": "2025-01-02T09:00:00Z", "tickers": ["ACME"]}) + "\n"
    )  # fmt: skip
    unknown = riskwire("backfill", str(archive), "--model-version", "no-such-model", env=env)
    assert unknown.returncode == 2
    assert "no-such-model cannot score here" in unknown.stdout
    missing = riskwire("replay", "cancel", "replay-nope", env=env)
    assert missing.returncode == 2 and "no replay job 'replay-nope'" in missing.stdout


def bench_json(tmp_path: Path, *args: str) -> dict:
    """``riskwire bench ARGS --json`` in a fresh data directory: its one JSON object."""
    result = riskwire(
        "bench", *args, "--json",
        env={"RISKWIRE_DATA_DIR": str(tmp_path), "RISKWIRE_LOG_LEVEL": "warning"}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bench_replay_prints_one_json_object(tmp_path: Path) -> None:
    figures = bench_json(tmp_path, "replay", "--documents", "2000", "--rescore-documents", "0")
    assert figures["documents"] == 2000 and figures["cached_docs_per_s"] > 0
    assert figures["engine_docs_per_s"] > 0 and figures["engine_live_lateness_docs_per_s"] > 0


def test_bench_engine_prints_one_json_object(tmp_path: Path) -> None:
    figures = bench_json(tmp_path, "engine", "--documents", "4000", "--days", "6")
    assert figures["documents"] == 4000 and figures["lateness_minutes"] == 4 * 24 * 60
    assert len(figures["live_us_per_doc"]) == len(figures["baseline_us_per_doc"]) == 4
    assert all(x > 0 for x in figures["live_us_per_doc"] + figures["baseline_us_per_doc"])
    # four of the six days kept against the replay's two hours
    assert figures["live_most_events_held"] > 10 * figures["baseline_most_events_held"]


def test_bench_prune_prints_one_json_object(tmp_path: Path) -> None:
    figures = bench_json(tmp_path, "prune", "--documents", "1000")
    rows = figures["rows_deleted"]
    assert 400 < rows["documents"] < 600  # the first half of the period
    assert rows["scores"] == 2 * rows["documents"]  # the live scores and the replay's
    assert rows["ticker_sentiment"] >= rows["documents"] and rows["risk_aggregates"] > 0
    assert figures["rows_deleted_total"] == sum(rows.values()) and figures["rows_per_s"] > 0


def test_resume_refuses_a_job_that_seems_to_be_running_unless_forced(
    env: dict[str, str], tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from riskwire.replay import ReplaySpec, create_job
    from storage.tables import ReplayRunRow
    from tests.replay_helpers import DAY0

    url = f"sqlite:///{Path(env['RISKWIRE_DATA_DIR']) / 'riskwire.db'}"
    settings = load_settings(database_url=url, data_dir=Path(env["RISKWIRE_DATA_DIR"]))
    sessions = session_factory(make_engine(url))
    spec = ReplaySpec(start=DAY0, end=DAY0.replace(day=4), model_version=lexicon_ensemble().version)
    job = create_job(sessions, settings, spec)
    with sessions.begin() as session:  # as if a process were running it right now
        row = session.get(ReplayRunRow, job)
        assert row is not None
        row.status, row.updated_at = "running", datetime.now(UTC)

    refused = riskwire("replay", "resume", job, env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "--force" in refused.stdout
    forced = riskwire("replay", "resume", job, "--force", env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"job {job}: done" in forced.stdout

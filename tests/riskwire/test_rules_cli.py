"""``riskwire rules`` and ``riskwire silence`` through the real command line, on a SQLite file."""

from __future__ import annotations

import re
from pathlib import Path

from riskwire.settings import load_settings
from storage import make_engine, session_factory
from streams.pipeline.rules import configured_rules
from tests.riskwire.test_cli import riskwire

RULES = """
rules:
  - {name: shock, type: sentiment_z, window_minutes: 60, sentiment_z: -3, family: sentiment}
  - {name: sector_surge, type: negative_surge, group: sector, min_documents: 8}
"""


def test_rules_are_checked_loaded_into_the_database_and_run_by_workers(tmp_path: Path) -> None:
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    assert riskwire("db", "upgrade", env=env).returncode == 0
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    checked = riskwire("rules", "check", str(path), env=env)
    assert (
        checked.returncode == 0 and "2 rules" in checked.stdout and "sector_surge" in checked.stdout
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, type: sentiment_z, group: desk}\n")
    refused = riskwire("rules", "check", str(bad), env=env)
    assert refused.returncode == 2 and "group: expected one of" in refused.stdout + refused.stderr

    loaded = riskwire("rules", "load", str(path), env=env)
    assert loaded.returncode == 0 and "rule set 1" in loaded.stdout
    shown = riskwire("rules", "show", env=env)
    assert "shock" in shown.stdout and "sector_surge" in shown.stdout
    settings = load_settings(data_dir=tmp_path / "data")
    engine = make_engine(settings.resolved_database_url)
    rules = configured_rules(settings, session_factory(engine))
    engine.dispose()
    assert [r.name for r in rules] == ["shock", "sector_surge"] and rules[0].family == "sentiment"


def test_silences_are_added_listed_and_expired(tmp_path: Path) -> None:
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    assert riskwire("db", "upgrade", env=env).returncode == 0
    added = riskwire("silence", "add", "--ticker", "XOM", "--for", "2h", "--comment",
                     "refinery outage", "--by", "desk", env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    (silence_id,) = re.findall(r"silence (\w+) until", added.stdout)
    listed = riskwire("silence", "list", env=env)
    assert silence_id in listed.stdout and "refinery outage" in listed.stdout
    bad = riskwire("silence", "add", "--for", "soon", "--comment", "x", env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stdout + bad.stderr
    assert riskwire("silence", "expire", silence_id, env=env).returncode == 0
    assert silence_id not in riskwire("silence", "list", env=env).stdout
    assert silence_id in riskwire("silence", "list", "--all", env=env).stdout
    again = riskwire("silence", "expire", silence_id, env=env)
    assert again.returncode == 2 and "no active silence" in again.stdout + again.stderr

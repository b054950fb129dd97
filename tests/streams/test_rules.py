from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from riskwire.settings import load_settings
from streams.pipeline import NegativeSurgeRule
from streams.pipeline.rules import (
    RulesError,
    configured_rules,
    load_rules,
    parse_rules,
    rules_as_data,
    rules_digest,
)

RULES_YAML = """
rules:
  - name: surge_2h
    type: negative_surge
    window_minutes: 120
    hop_minutes: 30
    min_documents: 4
    negative_share: 0.6
    mean_score: -0.25
  - name: surge_1d
    window_minutes: 1440
    hop_minutes: 240
    min_documents: 12
"""


def test_a_rules_file_is_read_into_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_YAML)
    short, long = load_rules(path)
    assert short == NegativeSurgeRule(name="surge_2h")
    assert long.window == timedelta(days=1) and long.hop == timedelta(hours=4)
    assert long.min_documents == 12 and long.negative_share == 0.6  # defaults fill the rest


def test_rules_round_trip_through_their_data_form(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_YAML)
    rules = load_rules(path)
    assert parse_rules(rules_as_data(rules)) == rules
    assert rules_digest(rules) == rules_digest(parse_rules(rules_as_data(rules)))
    assert rules_digest(rules) != rules_digest(rules[:1])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "non-empty list under 'rules'"),
        ({"rules": []}, "non-empty list under 'rules'"),
        ({"rules": ["x"]}, "rules[0]: expected a mapping"),
        ({"rules": [{"name": "a", "threshold": 1}]}, "unknown field(s) ['threshold']"),
        ({"rules": [{"name": "a", "type": "moon_phase"}]}, "unknown rule type 'moon_phase'"),
        ({"rules": [{"name": "a", "min_documents": "four"}]}, "min_documents: expected int"),
        ({"rules": [{"name": "a", "min_documents": True}]}, "min_documents: expected int"),
        ({"rules": [{"name": "a", "hop_minutes": 300}]}, "need 0 < hop <= window"),
        ({"rules": [{"name": "a", "negative_share": 1.5}]}, "0 <= negative_share <= 1"),
        ({"rules": [{"name": "a"}, {"name": "a"}]}, "rule names must be unique"),
    ],
)
def test_bad_rules_are_refused_with_where_and_why(data: object, reason: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(data, "my.yaml")
    assert reason in str(caught.value) and "my.yaml" in str(caught.value)


def test_a_rules_file_that_is_not_yaml_or_missing_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [unclosed\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(bad)
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "missing.yaml")


def test_live_rules_come_from_the_file_when_set_else_from_the_surge_settings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_YAML)
    assert [r.name for r in configured_rules(load_settings(rules_file=path))] == [
        "surge_2h",
        "surge_1d",
    ]
    (rule,) = configured_rules(load_settings(surge_min_documents=7, rolling_window_minutes=60))
    assert rule.min_documents == 7 and rule.window == timedelta(hours=1)


def test_the_shipped_example_rules_file_parses_into_every_rule_type() -> None:
    path = Path(__file__).resolve().parents[2] / "streams" / "rules.example.yaml"
    rules = load_rules(path)
    assert {r.type for r in rules} == {
        "negative_surge", "sentiment_z", "volume_spike", "drift", "disagreement"
    }  # fmt: skip
    assert {r.group for r in rules} == {"ticker", "sector", "market"}

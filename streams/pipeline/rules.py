"""Warning rules as data: parsed from a YAML file (``--rules``, ``RISKWIRE_RULES_FILE``) or built
from settings, and written back as plain dicts so a replay records exactly which rules it ran.

    rules:
      - name: negative_surge        # unique; part of every alert's identity
        type: negative_surge
        window_minutes: 120
        hop_minutes: 30
        min_documents: 4
        negative_share: 0.6
        mean_score: -0.25
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from riskwire.exceptions import RiskwireError
from riskwire.settings import Settings
from streams.pipeline.risk import NegativeSurgeRule, RiskEngine


class RulesError(RiskwireError):
    """A rules file that cannot be used, with what is wrong and where."""


FIELDS = {
    "name": str,
    "type": str,
    "window_minutes": float,
    "hop_minutes": float,
    "min_documents": int,
    "negative_share": float,
    "mean_score": float,
}
TYPES = {"negative_surge"}


def parse_rules(data: Any, where: str = "rules") -> tuple[NegativeSurgeRule, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise RulesError(f"{where}: expected a mapping with a non-empty list under 'rules'")
    rules = []
    for i, entry in enumerate(data["rules"]):
        at = f"{where}: rules[{i}]"
        if not isinstance(entry, dict):
            raise RulesError(f"{at}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise RulesError(f"{at}: unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
        kind = entry.get("type", "negative_surge")
        if kind not in TYPES:
            raise RulesError(f"{at}: unknown rule type {kind!r}; known: {sorted(TYPES)}")
        values: dict[str, Any] = {}
        for name, value in entry.items():
            want = FIELDS[name]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool):
                raise RulesError(f"{at}.{name}: expected {want.__name__}, got {value!r}")
            values[name] = value
        try:
            rules.append(
                NegativeSurgeRule(
                    name=values.get("name", "negative_surge"),
                    window=timedelta(minutes=values.get("window_minutes", 120.0)),
                    hop=timedelta(minutes=values.get("hop_minutes", 30.0)),
                    min_documents=values.get("min_documents", 4),
                    negative_share=values.get("negative_share", 0.6),
                    mean_score=values.get("mean_score", -0.25),
                )
            )
        except ValueError as exc:
            raise RulesError(f"{at}: {exc}") from None
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RulesError(f"{where}: rule names must be unique, got {names}")
    return tuple(rules)


def load_rules(path: Path) -> tuple[NegativeSurgeRule, ...]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(data, str(path))


def rules_as_data(rules: Sequence[NegativeSurgeRule]) -> dict[str, Any]:
    """The inverse of ``parse_rules``: what a replay stores to say which rules it ran."""
    return {
        "rules": [
            {
                "name": r.name, "type": "negative_surge",
                "window_minutes": r.window.total_seconds() / 60,
                "hop_minutes": r.hop.total_seconds() / 60, "min_documents": r.min_documents,
                "negative_share": r.negative_share, "mean_score": r.mean_score,
            }
            for r in rules
        ]
    }  # fmt: skip


def rules_digest(rules: Sequence[NegativeSurgeRule]) -> str:
    canonical = json.dumps(rules_as_data(rules), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def configured_rules(settings: Settings) -> tuple[NegativeSurgeRule, ...]:
    """The rules the live stream runs: the rules file when one is set, else the surge settings."""
    if settings.rules_file is not None:
        return load_rules(settings.rules_file)
    return (
        NegativeSurgeRule(
            window=timedelta(minutes=settings.rolling_window_minutes),
            hop=timedelta(minutes=settings.rule_hop_minutes),
            min_documents=settings.surge_min_documents,
            negative_share=settings.surge_negative_share,
            mean_score=settings.surge_mean_score,
        ),
    )


def build_risk_engine(
    settings: Settings,
    run_id: str = "live",
    rules: Sequence[NegativeSurgeRule] | None = None,
    lateness: timedelta | None = None,
) -> RiskEngine:
    """The engine the live stream uses; a replay passes its own rules and no lateness (it is sorted)."""
    return RiskEngine(
        rules if rules is not None else configured_rules(settings),
        run_id,
        lateness=lateness
        if lateness is not None
        else timedelta(minutes=settings.allowed_lateness_minutes),
        trailing=timedelta(minutes=settings.rolling_window_minutes),
    )

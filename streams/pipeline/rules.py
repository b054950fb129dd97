"""Warning rules as data: parsed from a YAML file (``--rules``, ``RISKWIRE_RULES_FILE``), loaded into
the database (``riskwire rules load``) or built from settings, and written back as plain dicts so a
replay records exactly which rules it ran.

    rules:
      - name: negative_surge        # unique; part of every alert's identity
        type: negative_surge        # negative_surge | sentiment_z | volume_spike | drift | disagreement
        group: ticker               # ticker | sector | market
        window_minutes: 120
        hop_minutes: 30             # negative_surge only: the others use tumbling windows
        min_documents: 4
        negative_share: 0.6         # conditions: any of the metrics below
        mean_score: -0.25
        severity: warning           # info | warning | critical
        critical: {min_documents: 8, negative_share: 0.8}   # stricter bounds: critical
        cooldown_minutes: 120       # default: the window
        family: sentiment           # for inhibition; default: the type

Metrics: ``min_documents``, ``negative_share``, ``volume_z``, ``disagreement``, ``dispersion`` hold at
or above their bound; ``mean_score`` and ``sentiment_z`` at or below it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from riskwire.exceptions import RiskwireError
from riskwire.records import Severity
from riskwire.settings import Settings
from streams.pipeline.risk import (
    GROUP_KINDS,
    METRICS,
    RULE_TYPES,
    NegativeSurgeRule,
    RiskEngine,
    Rule,
)

log = logging.getLogger(__name__)


class RulesError(RiskwireError):
    """A rules file that cannot be used, with what is wrong and where."""


# the YAML names of the metrics (``documents`` is written ``min_documents``)
METRIC_FIELDS = {("min_documents" if m == "documents" else m): m for m in sorted(METRICS)}
FIELDS: dict[str, type] = {
    "name": str,
    "type": str,
    "group": str,
    "window_minutes": float,
    "hop_minutes": float,
    "severity": str,
    "critical": dict,
    "cooldown_minutes": float,
    "family": str,
    "consecutive": int,
    **{name: (int if name == "min_documents" else float) for name in METRIC_FIELDS},
}
TYPES = set(RULE_TYPES)


def _typed(value: Any, want: type, at: str) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool):
        raise RulesError(f"{at}: expected {want.__name__}, got {value!r}")
    return value


def _conditions(values: dict[str, Any], at: str) -> tuple[tuple[str, float], ...]:
    out = []
    for name, value in values.items():
        if name not in METRIC_FIELDS:
            raise RulesError(f"{at}: unknown metric {name!r}; known: {sorted(METRIC_FIELDS)}")
        out.append((METRIC_FIELDS[name], float(_typed(value, FIELDS[name], f"{at}.{name}"))))
    return tuple(out)


def parse_rule(entry: Any, at: str) -> Rule:
    if not isinstance(entry, dict):
        raise RulesError(f"{at}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - set(FIELDS)
    if unknown:
        raise RulesError(f"{at}: unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
    kind = entry.get("type", "negative_surge")
    if kind not in TYPES:
        raise RulesError(f"{at}: unknown rule type {kind!r}; known: {sorted(TYPES)}")
    v = {name: _typed(value, FIELDS[name], f"{at}.{name}") for name, value in entry.items()}
    group = v.get("group", "ticker")
    if group not in GROUP_KINDS:
        raise RulesError(f"{at}.group: expected one of {list(GROUP_KINDS)}, got {group!r}")
    severity = v.get("severity", "warning")
    if severity not in {s.value for s in Severity}:
        raise RulesError(f"{at}.severity: expected info, warning or critical, got {severity!r}")
    window = timedelta(minutes=v.get("window_minutes", 120.0))
    hop = v.get("hop_minutes")
    if kind == "negative_surge" and hop is None:
        hop = 30.0
    cooldown = v.get("cooldown_minutes")
    try:
        return Rule(
            name=str(v.get("name", kind)),
            type=kind,
            window=window,
            hop=timedelta(minutes=hop) if hop is not None else None,
            group=group,
            conditions=_conditions({k: x for k, x in v.items() if k in METRIC_FIELDS}, at),
            critical=_conditions(v["critical"], f"{at}.critical") if "critical" in v else None,
            severity=Severity(severity),
            cooldown=timedelta(minutes=cooldown) if cooldown is not None else None,
            family=v.get("family"),
            consecutive=v.get("consecutive", 1),
        )
    except ValueError as exc:
        raise RulesError(f"{at}: {exc}") from None


def parse_rules(data: Any, where: str = "rules") -> tuple[Rule, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise RulesError(f"{where}: expected a mapping with a non-empty list under 'rules'")
    rules = tuple(
        parse_rule(entry, f"{where}: rules[{i}]") for i, entry in enumerate(data["rules"])
    )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RulesError(f"{where}: rule names must be unique, got {names}")
    return rules


def load_rules(path: Path) -> tuple[Rule, ...]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(data, str(path))


def _metric_field(metric: str) -> str:
    return "min_documents" if metric == "documents" else metric


def rule_as_data(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": r.name, "type": r.type, "group": r.group,
        "window_minutes": r.window.total_seconds() / 60,
        "hop_minutes": r.step.total_seconds() / 60, "severity": r.severity.value,
        "consecutive": r.consecutive,
    }  # fmt: skip
    for metric, bound in r.conditions:
        out[_metric_field(metric)] = int(bound) if metric == "documents" else bound
    out["critical"] = {_metric_field(m): int(b) if m == "documents" else b for m, b in r.strict}
    if r.cooldown is not None:
        out["cooldown_minutes"] = r.cooldown.total_seconds() / 60
    if r.family is not None:
        out["family"] = r.family
    return out


def rules_as_data(rules: Sequence[Rule]) -> dict[str, Any]:
    """The inverse of ``parse_rules``: what a replay stores to say which rules it ran."""
    return {"rules": [rule_as_data(r) for r in rules]}


def rules_digest(rules: Sequence[Rule]) -> str:
    canonical = json.dumps(rules_as_data(rules), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def configured_rules(
    settings: Settings, sessions: sessionmaker[Session] | None = None
) -> tuple[Rule, ...]:
    """The rules the live stream runs: the rules file when one is set, else the newest rule set
    loaded into the database (``riskwire rules load``), else the surge settings."""
    if settings.rules_file is not None:
        return load_rules(settings.rules_file)
    if sessions is not None:
        from storage.repository import latest_rule_set

        try:
            with sessions() as session:
                stored = latest_rule_set(session)
        except SQLAlchemyError as exc:  # not migrated (yet): nothing can have been loaded
            log.warning("cannot read loaded rule sets (%s); using the surge settings", exc)
            stored = None
        if stored is not None:
            return parse_rules(stored.rules, f"rule set {stored.id} ({stored.source})")
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
    rules: Sequence[Rule] | None = None,
    lateness: timedelta | None = None,
    sessions: sessionmaker[Session] | None = None,
) -> RiskEngine:
    """The engine the live stream uses; a replay passes its own rules and no lateness (it is sorted)."""
    return RiskEngine(
        rules if rules is not None else configured_rules(settings, sessions),
        run_id,
        lateness=lateness
        if lateness is not None
        else timedelta(minutes=settings.allowed_lateness_minutes),
        trailing=timedelta(minutes=settings.rolling_window_minutes),
        aggregates=tuple(timedelta(minutes=m) for m in settings.aggregate_windows),
        baseline=timedelta(days=settings.baseline_days),
    )

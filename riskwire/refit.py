"""Analysts' labels fed back into the models: ``riskwire labels refit``.

Each ensemble the configured scorer uses (or the one named) has its fusion refitted on the
labelled documents that would be routed to it, judged against the live fusion on those labels
(``models.refit``: the live one on the labels it was not fitted on, the refit out of fold),
written as a new versioned ensemble file under ``DATA_DIR/models/refits`` and registered in
``model_versions`` whatever the verdict, so the comparison can be read later. With
``--promote`` a refit that is better takes the live file's place (the live file is kept beside the
refits, by its version, to go back to); running workers load it within ``model_reload_s`` without
a restart (``streams.context.WorkerContext.reload_models``), and record its version with every
score.

Nothing is refitted for an ensemble with fewer than ``min_labels`` labelled documents, or, with
``min_new``, when fewer labels were given since the last refit of that ensemble: run from cron,
the command then costs a query. A live fusion that is itself a refit is judged only on the labels
it was not fitted on (``models.refit``), so nothing is refitted until there are ``MIN_JUDGED`` of
those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from models.ensemble import Ensemble
from models.factory import (
    ensemble_from_spec,
    ensemble_path,
    is_a_name,
    is_routing,
    read_spec,
    relocate,
    spec_of,
    trained_dir,
)
from models.fusion import get_fusion
from models.refit import RefitTrial, judge_refit, refit_fusion, text_digest, unseen
from models.routing import ensemble_files, load_router
from models.training import LabelledSet
from riskwire.exceptions import RiskwireError
from riskwire.labels import export_rows
from riskwire.records import LABELS
from riskwire.settings import Settings
from storage import labels as store
from storage.labels import LabelSelection

# the fewest labels a live refit was not fitted on that a new refit is judged against it on
MIN_JUDGED = 20


@dataclass(frozen=True)
class Target:
    """One ensemble to refit: its name where it is routed to, the file it loads now, where a
    better refit goes live (None: a file outside ``DATA_DIR/models`` that riskwire leaves alone)."""

    name: str
    file: Path
    promote_to: Path | None


@dataclass
class Outcome:
    ensemble: str
    live_version: str
    labels: int
    status: str  # skipped, kept (the live fusion stays), better (not promoted), promoted
    reason: str
    candidate_version: str | None = None
    candidate: str | None = None  # the refit's file
    promoted_to: str | None = None
    trial: RefitTrial | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trial"] = self.trial.as_dict() if self.trial else None
        return out


def refits_dir(settings: Settings) -> Path:
    return trained_dir(settings) / "refits"


def _promote_to(file: Path, by_name: bool, settings: Settings) -> Path | None:
    """A file already under ``DATA_DIR/models`` is replaced; an ensemble looked up by name gets
    one there, which the lookup then finds before the shipped one; any other path is left."""
    models = trained_dir(settings).resolve()
    if file.resolve().is_relative_to(models):
        return file
    return trained_dir(settings) / "ensembles" / file.name if by_name else None


def target_files(name_or_path: str, settings: Settings) -> list[Target]:
    """The ensembles behind ``name_or_path`` (a routing file's, or the one file), unloaded."""
    path = ensemble_path(name_or_path, settings)
    if is_routing(path):
        return [Target(name, where.file, _promote_to(where.file, where.by_name, settings))
                for name, where in ensemble_files(path, settings).items()]  # fmt: skip
    name = str(read_spec(path).get("name", "ensemble"))
    return [Target(name, path, _promote_to(path, is_a_name(name_or_path), settings))]


def targets(
    name_or_path: str, settings: Settings
) -> tuple[list[Target], Callable[[tuple[str, str]], str], dict[str, Ensemble]]:
    """The ensembles behind ``name_or_path``, the route of a document's (kind, lang), and the
    ensembles loaded (members several share loaded once)."""
    found = target_files(name_or_path, settings)
    path = ensemble_path(name_or_path, settings)
    if is_routing(path):
        router = load_router(path, settings)
        return found, router.route, router.ensembles
    ensemble = ensemble_from_spec(read_spec(path), settings, path.parent)
    return found, lambda key: ensemble.name, {found[0].name: ensemble}


def promote(settings: Settings, file: Path, ensemble: str) -> tuple[Target, Path]:
    """Put an ensemble file (a refit, or a live file kept when a refit replaced it) live in the
    place of the ensemble of ``ensemble`` that has its name: the file it replaces is kept beside
    the refits first. Returns the target and where the replaced file was kept."""
    spec = read_spec(file)
    name = spec.get("name")
    found = [t for t in target_files(ensemble, settings) if read_spec(t.file).get("name") == name]
    if not found:
        raise RiskwireError(f"{ensemble} has no ensemble named {name!r} for {file} to replace")
    target = found[0]
    if target.promote_to is None:
        raise RiskwireError(f"{target.file} is outside {trained_dir(settings)}: copy {file} there "
                            "yourself, or name the ensemble in the routing file")  # fmt: skip
    live = read_spec(target.file)
    version = live.get("version") or ensemble_from_spec(live, settings, target.file.parent).version
    return target, _put_live(target, spec, file.parent, str(version), settings)


def _put_live(
    target: Target, spec: dict[str, Any], source: Path, live_version: str, settings: Settings
) -> Path:
    """``spec`` (read from folder ``source``) in the live file's place; the live file kept first
    beside the refits as ``live_version``, to go back to. Returns where it was kept."""
    assert target.promote_to is not None
    kept = refits_dir(settings) / f"{live_version}.json"
    if not kept.exists():
        _write(read_spec(target.file), target.file.parent, kept)
    _write(spec, source, target.promote_to)
    return kept


def _last_refit(folder: Path, name: str) -> datetime | None:
    """When the labels behind the last refit of ``name`` (promoted or not) were last changed."""
    newest = None
    for file in folder.glob("*.json"):
        try:
            spec = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        refit = spec.get("refit") if isinstance(spec, dict) else None
        if spec.get("name") == name and isinstance(refit, dict) and refit.get("labels_until"):
            when = datetime.fromisoformat(refit["labels_until"])
            newest = when if newest is None else max(newest, when)
    return newest


def _write(spec: dict[str, Any], source: Path, out: Path) -> None:
    """An ensemble file read from folder ``source``, written to ``out`` with its member paths
    rewritten for ``out``'s folder."""
    moved = dict(spec, members=relocate(spec["members"], source, out.parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(moved, indent=1) + "\n", encoding="utf-8")


def refit(
    settings: Settings,
    sessions: sessionmaker[Session],
    ensemble: str,
    *,
    only: str | None = None,
    kind: str | None = None,
    extra: LabelledSet | None = None,
    fusion: str | None = None,
    folds: int = 5,
    standard_errors: float = 2.0,
    min_labels: int = 50,
    min_new: int = 0,
    promote: bool = False,
    status: Callable[[str], Any] | None = None,
) -> tuple[list[Outcome], list[tuple[str, str, dict[str, Any]]]]:
    """Refit and judge each target (module docstring); returns the outcomes and the registry
    entries of the refits written."""
    found, route, ensembles = targets(ensemble, settings)
    if only is not None:
        found = [t for t in found if t.name == only]
        if not found:
            raise RiskwireError(f"{ensemble} has no ensemble {only!r}")
    with sessions() as session:
        rows, _ = export_rows(session, LabelSelection(kind=kind))
        until = store.latest(session)
        new_since = {}
        folder = refits_dir(settings)
        for target in found:
            last = _last_refit(folder, ensembles[target.name].name)
            if min_new and last is not None:
                newer = LabelSelection(since=last + timedelta(microseconds=1), kind=kind)
                new_since[target.name] = sum(store.counts(session, newer).values())
    outcomes, entries = [], []
    for target in found:
        live = ensembles[target.name]
        mine = [r for r in rows if route((r["kind"], r["lang"])) == target.name]
        outcome = Outcome(target.name, live.version, len(mine), "skipped", "")
        outcomes.append(outcome)
        strategy = fusion or live.fusion_name
        if not get_fusion(strategy).learns:
            outcome.reason = f"the {strategy} fusion has nothing to fit"
        elif len(mine) < max(min_labels, folds):
            outcome.reason = f"{len(mine)} labelled documents, fewer than {max(min_labels, folds)}"
        elif target.name in new_since and new_since[target.name] < min_new:
            outcome.reason = (f"{new_since[target.name]} labels given since the last refit, "
                              f"fewer than {min_new}")  # fmt: skip
        else:
            entries += _refit_one(target, live, mine, until, extra, strategy, folds,
                                  standard_errors, promote, settings, outcome, status)  # fmt: skip
    return outcomes, entries


def _refit_one(
    target: Target,
    live: Ensemble,
    rows: list[dict[str, Any]],
    until: datetime | None,
    extra: LabelledSet | None,
    strategy: str,
    folds: int,
    standard_errors: float,
    promote: bool,
    settings: Settings,
    outcome: Outcome,
    status: Callable[[str], Any] | None,
) -> list[tuple[str, str, dict[str, Any]]]:
    texts = [r["text"] for r in rows]
    labels = np.asarray([LABELS.index(r["label"]) for r in rows], dtype=np.int64)
    live_spec = read_spec(target.file)
    judged = unseen(texts, labels, (live_spec.get("fitted_on") or {}).get("texts") or ())
    if judged.sum() < min(MIN_JUDGED, len(rows)):
        outcome.reason = (f"the live fusion was fitted on {len(rows) - judged.sum()} of these "
                          f"{len(rows)} labels: {judged.sum()} others to judge it on, fewer "
                          f"than {MIN_JUDGED}")  # fmt: skip
        return []
    if status:
        status(f"{target.name}: scoring {len(texts):,} labelled documents with "
               f"{len(live.members)} members")  # fmt: skip
    probs = live.member_proba(texts)
    extra_probs = extra_labels = None
    if extra is not None and len(extra):
        if status:
            status(f"{target.name}: scoring {len(extra):,} --data rows")
        extra_probs, extra_labels = live.member_proba(extra.texts), extra.labels
    if status:
        status(f"{target.name}: {strategy} refitted fold by fold ({folds} folds)")
    trial = judge_refit(probs, labels, texts, live.fusion, live.weights, strategy, folds,
                        standard_errors, extra_probs, extra_labels, judged)  # fmt: skip
    fitted = refit_fusion(strategy, probs, labels, live.weights, extra_probs, extra_labels)
    candidate = Ensemble(live.members, live.weights.tolist(), fusion=fitted, name=live.name)
    labels_until = (until or datetime.now(UTC)).astimezone(UTC).isoformat()
    spec = spec_of(
        candidate, live_spec["members"],
        fitted_on={"rows": len(labels) + (len(extra) if extra is not None else 0),
                   "labels": len(labels),
                   "data_sha256": extra.sha256 if extra is not None else None,
                   # what the next refit leaves out when it judges this one (``models.refit``)
                   "texts": sorted({text_digest(t, int(y)) for t, y in zip(texts, labels, strict=True)})},
        refit={"of": live.version, "labels_until": labels_until, "verdict": trial.as_dict()},
        metrics={"split": "analysts' labels, out of fold", "rows": len(labels),
                 "fused": trial.refit, "live": trial.live},
    )  # fmt: skip
    folder = refits_dir(settings)
    written = folder / f"{candidate.version}.json"
    _write(spec, target.file.parent, written)
    outcome.candidate_version, outcome.candidate, outcome.trial = (
        candidate.version, str(written), trial)  # fmt: skip
    outcome.reason = trial.reason
    if candidate.version == live.version:
        outcome.status, outcome.reason = "kept", "the refit is the live fusion: nothing learnt"
    elif not trial.better:
        outcome.status = "kept"
    elif not promote:
        outcome.status = "better"
        outcome.reason += "; not promoted (--promote)"
    elif target.promote_to is None:
        outcome.status = "better"
        outcome.reason += f"; not promoted: {target.file} is outside {trained_dir(settings)}"
    else:
        _put_live(target, spec, target.file.parent, live.version, settings)
        outcome.status, outcome.promoted_to = "promoted", str(target.promote_to)
    entries = candidate.registry_entries()
    entries[0] = (entries[0][0], entries[0][1], entries[0][2] | {
        "path": str(written), "refit_of": live.version, "labels": len(labels),
        "metrics": trial.refit, "promoted": outcome.status == "promoted"})  # fmt: skip
    return entries

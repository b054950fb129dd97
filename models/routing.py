"""Routing: each document goes to the ensemble configured for its kind and language.

A routing file (YAML)::

    ensembles:            # name -> an ensemble file, or an ensemble's name (trained, then shipped)
      news: default
      social: ensembles/social.json
    routes:               # first match wins; a missing key matches anything
      - {kind: social, ensemble: social}
      - {kind: news, lang: en, ensemble: news}
    default: news         # where everything else goes

Relative ensemble paths are read from the routing file's folder. Members that several ensembles
share (an encoder, a lexicon) are loaded once. The router's version names its routes and every
ensemble's version, and the scores it writes carry it; their votes name each member's version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from models.ensemble import Ensemble, Judgement
from models.exceptions import ModelError
from riskwire.records import Kind
from riskwire.settings import Settings

RouteKey = tuple[str, str]  # (kind, lang)


@dataclass(frozen=True)
class Route:
    ensemble: str
    kind: str | None = None
    lang: str | None = None

    def matches(self, key: RouteKey) -> bool:
        return (self.kind in (None, key[0])) and (self.lang in (None, key[1]))


class Router:
    def __init__(
        self, ensembles: dict[str, Ensemble], routes: Sequence[Route], default: str,
        name: str = "router",
    ) -> None:  # fmt: skip
        if default not in ensembles:
            raise ModelError(f"default ensemble {default!r} is not one of {sorted(ensembles)}")
        for route in routes:
            if route.ensemble not in ensembles:
                raise ModelError(f"route {route} names no ensemble; have {sorted(ensembles)}")
            if route.kind is not None and route.kind not in {k.value for k in Kind}:
                raise ModelError(f"route {route}: kind must be one of {[k.value for k in Kind]}")
        self.ensembles = ensembles
        self.routes = list(routes)
        self.default = default
        self.name = name
        signature = json.dumps(
            {"routes": [vars(r) for r in self.routes], "default": default,
             "ensembles": {k: e.version for k, e in sorted(ensembles.items())}},
            sort_keys=True,
        )  # fmt: skip
        self.version = f"{name}-{hashlib.sha256(signature.encode()).hexdigest()[:10]}"

    def route(self, key: RouteKey) -> str:
        return next((r.ensemble for r in self.routes if r.matches(key)), self.default)

    def judge_routed(self, texts: Sequence[str], keys: Sequence[RouteKey]) -> list[Judgement]:
        """Each text judged by its route's ensemble, one batch per ensemble; input order kept."""
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self.route(key), []).append(i)
        out: list[Judgement | None] = [None] * len(texts)
        for name, index in groups.items():
            for i, judgement in zip(
                index, self.ensembles[name].judge([texts[i] for i in index]), strict=True
            ):
                out[i] = judgement
        return [j for j in out if j is not None]

    def judge_versioned(
        self, texts: Sequence[str], keys: Sequence[RouteKey]
    ) -> tuple[str, list[Judgement]]:
        return self.version, self.judge_routed(texts, keys)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "router",
            "routes": [vars(r) for r in self.routes],
            "default": self.default,
            "ensembles": {k: e.version for k, e in self.ensembles.items()},
        }

    def registry_entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        entries = [(self.name, self.version, self.describe())]
        seen = {self.version}
        for ensemble in self.ensembles.values():
            for entry in ensemble.registry_entries():
                if entry[1] not in seen:
                    seen.add(entry[1])
                    entries.append(entry)
        return entries


Scorer = Ensemble | Router  # what scores documents: one ensemble, or ensembles behind routes


class Judges(Protocol):
    """What scores documents: an ensemble, a router, or either in a process of its own."""

    @property
    def version(self) -> str: ...

    def judge_routed(self, texts: Sequence[str], keys: Sequence[Any]) -> list[Judgement]: ...

    def judge_versioned(
        self, texts: Sequence[str], keys: Sequence[Any]
    ) -> tuple[str, list[Judgement]]:
        """``judge_routed`` and the version that judged (which a reload may change meanwhile)."""
        ...

    def registry_entries(self) -> list[tuple[str, str, dict[str, Any]]]: ...


@dataclass(frozen=True)
class EnsembleFile:
    """Where a routing file's ensemble comes from: ``by_name`` when the routing file names it
    (looked up among the trained ensembles, then the shipped ones) rather than giving a path."""

    file: Path
    by_name: bool


def _config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read routing file {path}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("ensembles"), dict):
        raise ModelError(f"{path}: a routing file needs an 'ensembles' mapping")
    return config


def ensemble_files(path: Path, settings: Settings) -> dict[str, EnsembleFile]:
    """The ensemble file behind each name of a routing file."""
    from models.factory import ensemble_path, is_a_name

    files = {}
    for name, where in _config(path)["ensembles"].items():
        local = path.parent / str(where)
        by_name = not local.is_file() and is_a_name(str(where))
        file = ensemble_path(str(local) if local.is_file() else str(where), settings)
        if file.suffix != ".json":
            raise ModelError(f"{path}: ensemble {name!r} must be an ensemble file, got {file}")
        files[str(name)] = EnsembleFile(file, by_name)
    return files


def load_router(path: Path, settings: Settings) -> Router:
    from models.factory import MemberBuilder, ensemble_from_spec, read_spec

    config = _config(path)
    builder = MemberBuilder(settings)
    ensembles = {}
    for name, where in ensemble_files(path, settings).items():
        file = where.file
        ensembles[name] = ensemble_from_spec(read_spec(file), settings, file.parent, builder)
    routes = []
    for number, raw in enumerate(config.get("routes") or [], 1):
        if (
            not isinstance(raw, dict)
            or set(raw) - {"kind", "lang", "ensemble"}
            or not raw.get("ensemble")
        ):
            raise ModelError(f"{path}: route {number} needs 'ensemble' and only kind/lang: {raw}")
        routes.append(Route(str(raw["ensemble"]), raw.get("kind"), raw.get("lang")))
    default = str(config.get("default") or next(iter(ensembles)))
    return Router(ensembles, routes, default)

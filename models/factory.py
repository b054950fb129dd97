"""Build members and ensembles from names or from an ensemble file, so settings choose them.

An ensemble file (JSON) names its members, their weights and its fitted fusion::

    {"name": "default",
     "members": [{"member": "finvader"},
                 {"member": "head", "name": "minilm-fpb", "head": "heads/minilm-fpb.json"},
                 {"member": "hf", "name": "minilm-ft", "model": "/models/minilm-ft", "weight": 2}],
     "fusion": {"strategy": "stacking", "params": {...}}}

Member kinds: ``finlex``, ``lm`` and ``finvader`` (lexicons), ``head`` (a linear head over sentence
embeddings; ``encoder`` defaults to the packaged MiniLM), ``hf`` (any Hugging Face sequence
classifier: hub id or local path), ``null``. Relative paths are read from the file's folder.
``riskwire models fuse`` writes such files; the shipped one is ``models/artifacts/ensembles``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.base import Member
from models.embedding import ARTIFACT_DIR
from models.ensemble import Ensemble
from models.exceptions import ModelError
from models.fusion import get_fusion
from riskwire.settings import Settings

if TYPE_CHECKING:
    from models.routing import Router

log = logging.getLogger(__name__)
ENSEMBLE_DIR = ARTIFACT_DIR / "ensembles"
Spec = dict[str, Any]


def local_path(value: str, base: Path) -> str:
    """A path a member spec gives: relative to ``base`` where it is there, else as it is (an
    absolute path, or a hub id)."""
    candidate = base / value
    return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value


class MemberBuilder:
    """Builds members for one settings object, sharing one encoder among the heads that use it."""

    def __init__(self, settings: Settings, base: Path | None = None) -> None:
        self.settings = settings
        self.base = base or ARTIFACT_DIR
        self._encoders: dict[tuple[str | None, str], Any] = {}

    def path(self, value: str) -> str:
        return local_path(value, self.base)

    def precision(self, precision: str | None, quantize: bool | None) -> str:
        """A member's precision: its spec's (``quantize: true`` is int8), else the settings'."""
        from models.base import resolve_precision

        chosen = "int8" if quantize else (precision or self.settings.precision)
        return resolve_precision(chosen, self.settings.model_device)

    def encoder(self, path: str | None, precision: str) -> Any:
        from models.embedding import SentenceEncoder

        key = (path, precision)
        if key not in self._encoders:
            self._encoders[key] = SentenceEncoder(
                path, device=self.settings.model_device, precision=precision,
                trace=self.settings.trace_models,
            )  # fmt: skip
        return self._encoders[key]

    def build(self, spec: Spec, base: Path | None = None) -> Member:
        """A member from its spec; relative paths in it are read from ``base``."""
        if base is not None:
            self.base = base
        kind = spec.get("member")
        options = {k: v for k, v in spec.items() if k not in ("member", "weight")}
        try:
            factory = getattr(self, f"_{str(kind).replace('-', '_')}")
        except AttributeError:
            raise ModelError(
                f"unknown member kind {kind!r}; choose one of {sorted(MEMBER_KINDS)}"
            ) from None
        try:
            member: Member = factory(**options)
        except TypeError as exc:
            raise ModelError(f"member {spec!r}: {exc}") from exc
        return member

    def _finlex(self, name: str = "finlex") -> Member:
        from models.lexicon import LexiconMember

        return LexiconMember(name=name)

    def _lm(self, name: str = "lm") -> Member:
        from models.packaged import loughran_mcdonald_member

        return loughran_mcdonald_member(name)

    def _finvader(self, name: str = "finvader") -> Member:
        from models.packaged import FinVaderMember

        return FinVaderMember(name)

    def _head(
        self,
        name: str = "minilm-head",
        head: str = "minilm-head.json",
        encoder: str | None = None,
        precision: str | None = None,
        quantize: bool | None = None,
    ) -> Member:
        from models.embedding import EmbeddingHeadMember, Head

        chosen = self.precision(precision, quantize)
        enc = self.encoder(self.path(encoder) if encoder else self.settings.encoder_path, chosen)
        return EmbeddingHeadMember(enc, Head.load(Path(self.path(head))), name=name)

    def _hf(self, model: str, **options: Any) -> Member:
        from models.hf import HFClassifierMember

        options.setdefault("device", self.settings.model_device)
        options.setdefault("trace", self.settings.trace_models)
        options["precision"] = self.precision(
            options.get("precision"), options.pop("quantize", None)
        )
        return HFClassifierMember(self.path(model), **options)

    def _null(self, name: str = "null") -> Member:
        from models.base import NullMember

        return NullMember()


MEMBER_KINDS = ("finlex", "lm", "finvader", "head", "hf", "null")
# the names ``ensemble_members`` accepts, each a member spec
MEMBERS: dict[str, Spec] = {
    "finlex": {"member": "finlex"},
    "lm": {"member": "lm"},
    "finvader": {"member": "finvader"},
    "minilm-head": {"member": "head"},
    "null": {"member": "null"},
}


def parse_members(spec: str) -> tuple[tuple[str, float], ...]:
    """``"finlex:1,minilm-head:1.5"`` -> members and their weights (weight 1 when left out)."""
    members = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, weight = part.partition(":")
        try:
            members.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise ModelError(f"member weight in {part!r} is not a number") from None
    if not members:
        raise ModelError("an ensemble needs at least one member")
    return tuple(members)


def trained_dir(settings: Settings) -> Path:
    """Where ``make models`` puts what it trains here (too large for the repository)."""
    return settings.data_dir / "models"


def is_a_name(name_or_path: str) -> bool:
    """Whether ``ensemble_path`` looks ``name_or_path`` up by name rather than reading a file."""
    path = Path(name_or_path)
    return path.suffix not in (".json", ".yaml", ".yml") and not path.exists()


def ensemble_path(name_or_path: str, settings: Settings | None = None) -> Path:
    """An ensemble file (``.json``) or a routing file (``.yaml``): a path, or a name looked up among
    those trained on this machine (``DATA_DIR/models/ensembles``) first, then the shipped ones; a
    routing file of that name comes before an ensemble file."""
    path = Path(name_or_path)
    if not is_a_name(name_or_path):
        if not path.is_file():
            raise ModelError(f"no ensemble file {path}")
        return path
    folders = ([trained_dir(settings) / "ensembles"] if settings else []) + [ENSEMBLE_DIR]
    for folder in folders:
        for suffix in (".yaml", ".json"):
            if (folder / f"{name_or_path}{suffix}").is_file():
                return folder / f"{name_or_path}{suffix}"
    known = sorted({p.stem for folder in folders for p in folder.glob("*.*")})
    raise ModelError(f"no ensemble {name_or_path!r}; known: {known}, or give a .json path")


def is_routing(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml")


def relocate(member_specs: list[Spec], source: Path, target: Path) -> list[Spec]:
    """Member specs read relative to folder ``source``, rewritten relative to folder ``target``."""
    out = []
    for spec in member_specs:
        moved = dict(spec)
        for key in ("head", "model", "encoder"):
            value = spec.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                if (source / value).exists():
                    moved[key] = os.path.relpath((source / value).resolve(), target.resolve())
        out.append(moved)
    return out


def read_spec(path: Path) -> Spec:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read ensemble file {path}: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("members"), list):
        raise ModelError(f"{path}: an ensemble file needs a 'members' list")
    return spec


def ensemble_from_spec(
    spec: Spec, settings: Settings, base: Path | None = None, builder: MemberBuilder | None = None
) -> Ensemble:
    builder = builder or MemberBuilder(settings)
    members = [builder.build(m, base or ARTIFACT_DIR) for m in spec["members"]]
    fusion = spec.get("fusion") or {"strategy": "soft"}
    return Ensemble(
        members,
        [float(m.get("weight", 1.0)) for m in spec["members"]],
        fusion=get_fusion(fusion.get("strategy", "soft"), fusion.get("params")),
        name=str(spec.get("name", "ensemble")),
    )


def load_ensemble(
    name_or_path: str, settings: Settings, builder: MemberBuilder | None = None
) -> Ensemble:
    """One ensemble; given a routing file, the ensemble of its default route."""
    path = ensemble_path(name_or_path, settings)
    log.info("ensemble file %s", path)
    if is_routing(path):
        from models.routing import load_router

        router = load_router(path, settings)
        return router.ensembles[router.default]
    return ensemble_from_spec(read_spec(path), settings, path.parent, builder)


def spec_of(ensemble: Ensemble, member_specs: list[Spec], **extra: Any) -> Spec:
    """The file form of a (fitted) ensemble built from ``member_specs``."""
    members = [
        dict(m, weight=float(w)) for m, w in zip(member_specs, ensemble.weights, strict=True)
    ]
    return {
        "name": ensemble.name,
        "version": ensemble.version,
        "members": members,
        "fusion": {"strategy": ensemble.fusion.name, "params": ensemble.fusion.params()},
        **extra,
    }


def scorer_files(settings: Settings) -> tuple[tuple[str, int | None, int | None], ...]:
    """The files that say what the configured scorer is, each as (path, mtime in ns, size): the
    ensemble or routing file the setting resolves to; for a routing file, the ensemble files it
    names (a name resolves to a newly trained file before the shipped one, so a new path is a
    change too); and every member's own files (``member_files``), so a member retrained in place
    is a change as well. Empty for members named in ``ensemble_members``."""
    if settings.ensemble_members:
        return ()
    try:
        path = ensemble_path(settings.ensemble, settings)
        ensembles = [path]
        if is_routing(path):
            from models.routing import ensemble_files

            ensembles = [where.file for where in ensemble_files(path, settings).values()]
        files = [path] if is_routing(path) else []
        for file in ensembles:
            files.append(file)
            files += member_files(read_spec(file), file.parent)
    except ModelError as exc:  # a file half-written or gone: a change, loaded when it is whole
        return ((f"error: {exc}", None, None),)
    out: list[tuple[str, int | None, int | None]] = []
    for file in dict.fromkeys(files):  # a member two ensembles share is watched once
        try:
            stat = file.stat()
            out.append((str(file), stat.st_mtime_ns, stat.st_size))
        except OSError:
            out.append((str(file), None, None))
    return tuple(out)


def member_files(spec: Spec, base: Path) -> list[Path]:
    """The local files an ensemble file's members load (relative paths read from ``base``, as
    ``MemberBuilder`` reads them): a head's file, and for a model or encoder folder the weights and
    configs its version is a digest of (``models.hf.version_files``). A hub id names no file."""
    out: list[Path] = []
    for member in spec["members"]:
        if not isinstance(member, dict):
            continue
        for key in ("head", "model", "encoder"):
            value = member.get(key)
            if not isinstance(value, str):
                continue
            path = Path(local_path(value, base))
            if path.is_dir():
                from models.hf import version_files

                out += version_files(path)
            elif path.is_file():
                out.append(path)
    return out


def make_ensemble(
    settings: Settings, factory: Callable[[], Ensemble] | None = None
) -> Ensemble | Router:
    """What a worker or a replay scores with: the given factory's ensemble, else the members named
    in ``ensemble_members``, else the configured ensemble or routing file."""
    if factory is not None:
        return factory()
    if not settings.ensemble_members:
        path = ensemble_path(settings.ensemble, settings)
        if is_routing(path):
            from models.routing import load_router

            log.info("routing file %s", path)
            return load_router(path, settings)
    return build_ensemble(settings)


def build_ensemble(
    settings: Settings,
    members: tuple[tuple[str, float], ...] | None = None,
    fusion: str = "soft",
) -> Ensemble:
    """Members by name (``MEMBERS``); with none given, the configured ensemble (for a routing
    file, the ensemble of its default route)."""
    if members is None:
        if settings.ensemble_members:
            return build_ensemble(settings, parse_members(settings.ensemble_members), fusion)
        return load_ensemble(settings.ensemble, settings)
    builder = MemberBuilder(settings)
    built = []
    for name, _ in members:
        if name not in MEMBERS:
            raise ModelError(f"unknown member {name!r}; choose one of {sorted(MEMBERS)}")
        built.append(builder.build(MEMBERS[name]))
    return Ensemble(built, [w for _, w in members], fusion=fusion, name="default")

"""Build members and ensembles by name, so settings choose them without if-ladders."""

from __future__ import annotations

from collections.abc import Callable

from models.base import Member
from models.ensemble import Ensemble
from models.exceptions import ModelError
from riskwire.settings import Settings


def _lexicon(settings: Settings) -> Member:
    from models.lexicon import LexiconMember

    return LexiconMember()


def _minilm_head(settings: Settings) -> Member:
    from models.embedding import DEFAULT_HEAD, EmbeddingHeadMember, Head, SentenceEncoder

    encoder = SentenceEncoder(settings.encoder_path, device=settings.device)
    return EmbeddingHeadMember(encoder, Head.load(DEFAULT_HEAD))


def _null(settings: Settings) -> Member:
    from models.base import NullMember

    return NullMember()


MEMBERS: dict[str, Callable[[Settings], Member]] = {
    "finlex": _lexicon,
    "minilm-head": _minilm_head,
    "null": _null,
}

DEFAULT_MEMBERS = (("finlex", 1.0), ("minilm-head", 1.5))


def build_member(name: str, settings: Settings) -> Member:
    try:
        factory = MEMBERS[name]
    except KeyError:
        raise ModelError(f"unknown member {name!r}; choose one of {sorted(MEMBERS)}") from None
    return factory(settings)


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


def make_ensemble(settings: Settings, factory: Callable[[], Ensemble] | None = None) -> Ensemble:
    """The ensemble a worker or a replay runs: the given factory's, else the configured one."""
    if factory is not None:
        return factory()
    return build_ensemble(settings, parse_members(settings.ensemble_members))


def build_ensemble(
    settings: Settings,
    members: tuple[tuple[str, float], ...] = DEFAULT_MEMBERS,
    fusion: str = "soft",
) -> Ensemble:
    built = [build_member(name, settings) for name, _ in members]
    return Ensemble(built, [w for _, w in members], fusion=fusion, name="default")

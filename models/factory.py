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


MEMBERS: dict[str, Callable[[Settings], Member]] = {
    "finlex": _lexicon,
    "minilm-head": _minilm_head,
}

DEFAULT_MEMBERS = (("finlex", 1.0), ("minilm-head", 1.5))


def build_member(name: str, settings: Settings) -> Member:
    try:
        factory = MEMBERS[name]
    except KeyError:
        raise ModelError(f"unknown member {name!r}; choose one of {sorted(MEMBERS)}") from None
    return factory(settings)


def make_ensemble(settings: Settings, factory: Callable[[], Ensemble] | None = None) -> Ensemble:
    """The ensemble a worker or a replay runs: the given factory's, else the default one."""
    return factory() if factory is not None else build_ensemble(settings)


def build_ensemble(
    settings: Settings,
    members: tuple[tuple[str, float], ...] = DEFAULT_MEMBERS,
    fusion: str = "soft",
) -> Ensemble:
    built = [build_member(name, settings) for name, _ in members]
    return Ensemble(built, [w for _, w in members], fusion=fusion, name="default")

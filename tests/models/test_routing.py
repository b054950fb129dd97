"""Routing documents to the ensemble configured for their kind and language."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.ensemble import Ensemble
from models.exceptions import ModelError
from models.factory import make_ensemble
from models.routing import Route, Router, load_router
from riskwire.records import Kind
from riskwire.settings import Settings
from streams.pipeline.score import score_documents
from tests.factories import make_document
from tests.models.conftest import FixedMember

NEG, NEU, POS = [0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]


def router() -> Router:
    ensembles = {
        "news": Ensemble([FixedMember("newsy", NEG)], name="news"),
        "social": Ensemble([FixedMember("tweety", POS)], name="social"),
        "german": Ensemble([FixedMember("deutsch", NEU)], name="german"),
    }
    routes = [Route("social", kind="social"), Route("german", lang="de")]
    return Router(ensembles, routes, default="news")


def test_documents_go_to_their_ensemble_and_keep_their_order() -> None:
    docs = [
        make_document(kind=Kind.NEWS, lang="en"),
        make_document(kind=Kind.SOCIAL, lang="en"),
        make_document(kind=Kind.NEWS, lang="de"),
        make_document(kind=Kind.SOCIAL, lang="de"),  # first match wins: social
        make_document(kind=Kind.NEWS, lang="fr"),  # no route: the default
    ]
    scores = score_documents(router(), docs)
    assert [s.document_id for s in scores] == [d.id for d in docs]
    assert [s.label for s in scores] == ["negative", "positive", "neutral", "positive", "negative"]
    assert [s.votes[0].member for s in scores] == ["newsy", "tweety", "deutsch", "tweety", "newsy"]
    assert {s.model_version for s in scores} == {router().version}


def test_router_version_and_registry_name_every_ensemble() -> None:
    r = router()
    entries = r.registry_entries()
    assert entries[0][:2] == ("router", r.version)
    assert {e[0] for e in entries} >= {"news", "social", "german", "newsy", "tweety", "deutsch"}
    other = Router(r.ensembles, [Route("social", kind="social")], default="news")
    assert other.version != r.version


def test_bad_routes_are_refused() -> None:
    ensembles = {"news": Ensemble([FixedMember("a", NEG)])}
    with pytest.raises(ModelError, match="names no ensemble"):
        Router(ensembles, [Route("social", kind="social")], default="news")
    with pytest.raises(ModelError, match="default ensemble 'x'"):
        Router(ensembles, [], default="x")
    with pytest.raises(ModelError, match="kind must be one of"):
        Router(ensembles, [Route("news", kind="blog")], default="news")


def test_a_routing_file_builds_the_configured_router(tmp_path: Path) -> None:
    (tmp_path / "lexicons.json").write_text(json.dumps({
        "name": "lexicons",
        "members": [{"member": "finlex"}, {"member": "finvader", "weight": 2}],
        "fusion": {"strategy": "majority"},
    }))  # fmt: skip
    (tmp_path / "finlex.json").write_text(json.dumps({"members": [{"member": "finlex"}]}))
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "ensembles:\n  news: finlex.json\n  social: lexicons.json\n"
        "routes:\n  - {kind: social, ensemble: social}\ndefault: news\n"
    )
    settings = Settings(data_dir=tmp_path, ensemble=str(routing))
    built = make_ensemble(settings)
    assert isinstance(built, Router)
    assert [m.name for m in built.ensembles["social"].members] == ["finlex", "finvader"]
    assert built.ensembles["social"].fusion_name == "majority"
    assert built.route(("social", "en")) == "social" and built.route(("news", "en")) == "news"
    routing.write_text("ensembles:\n  news: finlex.json\nroutes:\n  - {kind: news}\n")
    with pytest.raises(ModelError, match="route 1 needs 'ensemble'"):
        load_router(routing, settings)
    routing.write_text("routes: []\n")
    with pytest.raises(ModelError, match="needs an 'ensembles' mapping"):
        load_router(routing, settings)


def test_a_member_retrained_in_place_is_a_change_the_worker_reloads(
    tmp_path: Path, tiny_classifier_dir: Path
) -> None:
    """The worker watches the members' own files as well as the routing and ensemble files: new
    weights written into a member's folder change what ``scorer_files`` sees, and the reload then
    scores under the new version; a member two ensembles share is watched once."""
    import asyncio
    import shutil

    from models.factory import scorer_files
    from tests.models.conftest import save_tiny_classifier
    from tests.streams.test_flows import reloading_context

    member = tmp_path / "clf"
    shutil.copytree(tiny_classifier_dir, member)
    tiny = {"member": "hf", "name": "tiny", "model": "clf", "max_length": 32}
    (tmp_path / "news.json").write_text(json.dumps({"name": "news", "members": [tiny]}))
    (tmp_path / "social.json").write_text(json.dumps(
        {"name": "social", "members": [tiny, {"member": "head", "head": "head.json"}]}
    ))  # fmt: skip
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "ensembles:\n  news: news.json\n  social: social.json\n"
        "routes:\n  - {kind: social, ensemble: social}\ndefault: news\n"
    )
    settings = Settings(data_dir=tmp_path, ensemble=str(routing), scoring_process=False)
    (tmp_path / "head.json").write_text("{}")  # not loaded here: only its file is watched
    watched = [Path(path) for path, _, _ in scorer_files(settings)]
    assert watched[:2] == [routing, tmp_path / "news.json"]
    assert member / "model.safetensors" in watched and member / "config.json" in watched
    assert tmp_path / "head.json" in watched and not any("tokenizer" in p.name for p in watched)
    assert len(watched) == len(set(watched))

    (tmp_path / "social.json").write_text(json.dumps({"name": "social", "members": [tiny]}))
    context, before = reloading_context(tmp_path, routing, in_a_process=False)
    try:
        seen = scorer_files(context.settings)
        save_tiny_classifier(member, {0: "positive", 1: "negative", 2: "neutral"}, seed=1)
        assert scorer_files(context.settings) != seen
        after = asyncio.run(context.reload_models())
        assert after is not None and after != before
        (score,) = asyncio.run(context.score([make_document(text="Shares fall")]))
        assert score.model_version == after
        assert asyncio.run(context.reload_models()) is None
    finally:
        context.close()

"""``riskwire labels refit`` on a real SQLite database: the analysts' labels refit the fusion of
the ensemble their documents are routed to, the refit is judged against the live fusion on those
labels, written, registered and (with --promote) put live; and nothing is refitted without enough
labels, or without new ones since the last refit.

The live ``news`` ensemble is three lexicons under an equal, uncalibrated vote, and the desk's
labels are the true labels of the packaged risk-news sentences: a fusion fitted on them learns
calibration and weights the live one lacks, so the known answer is that the refit is better."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from models.factory import MemberBuilder, ensemble_from_spec, read_spec
from models.training import LabelledSet, evaluate
from riskwire.records import LABELS, Kind
from riskwire.settings import Settings
from storage import labels, make_engine, repository, session_factory, upgrade
from storage.tables import ModelVersionRow
from tests.factories import make_document
from tests.riskwire.test_cli import riskwire

PACKAGED = Path(__file__).parents[2] / "models" / "data" / "train.jsonl"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "labelled.jsonl"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LEXICONS = [{"member": "finvader"}, {"member": "lm"}, {"member": "finlex"}]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """150 news sentences and 53 social ones, each labelled by an analyst; a routing file sends
    social posts to ``lexsocial`` (a majority vote: nothing to fit) and the rest to ``lexnews``,
    both trained here (``DATA_DIR/models/ensembles``), so a better refit may replace them."""
    url = f"sqlite:///{tmp_path / 'refit.db'}"
    data = tmp_path / "data"
    ensembles = data / "models" / "ensembles"
    ensembles.mkdir(parents=True)
    for name, fusion in [("lexnews", "soft"), ("lexsocial", "majority")]:
        spec = {"name": name, "members": LEXICONS, "fusion": {"strategy": fusion, "params": {}}}
        (ensembles / f"{name}.json").write_text(json.dumps(spec))
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "ensembles: {news: lexnews, social: lexsocial}\n"
        "routes: [{kind: social, ensemble: social}]\ndefault: news\n"
    )
    sentences = LabelledSet.read(PACKAGED)
    docs = [
        make_document(title=None, text=text, kind=Kind.NEWS if n < 150 else Kind.SOCIAL)
        for n, text in enumerate(sentences.texts)
    ]  # fmt: skip
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, docs)
        for n, (doc, label) in enumerate(zip(docs, sentences.labels, strict=True)):
            labels.put(session, doc.id, "ana", LABELS[label], T0 + timedelta(seconds=n))
    engine.dispose()
    return {"RISKWIRE_DATABASE_URL": url, "RISKWIRE_DATA_DIR": str(data), "COLUMNS": "250",
            "RISKWIRE_ENSEMBLE": str(routing), "LAST_ID": docs[-1].id}  # fmt: skip


def refit(env: dict[str, str], *args: str) -> dict:
    done = riskwire("labels", "refit", *args, "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {o["ensemble"]: o for o in json.loads(done.stdout)["ensembles"]}


def test_a_refit_on_the_analysts_labels_is_judged_written_registered_and_promoted(
    env: dict[str, str],
) -> None:
    data = Path(env["RISKWIRE_DATA_DIR"])
    live_file = data / "models" / "ensembles" / "lexnews.json"
    settings = Settings(data_dir=data)
    live = ensemble_from_spec(
        read_spec(live_file), settings, live_file.parent, MemberBuilder(settings)
    )
    news = LabelledSet.read(PACKAGED)
    texts, y = news.texts[:150], news.labels[:150]

    # too few labels for the bar: nothing refitted, nothing written
    skipped = refit(env, "--min-labels", "500")
    assert skipped["news"]["status"] == skipped["social"]["status"] == "skipped"
    assert "150 labelled documents, fewer than 500" in skipped["news"]["reason"]
    assert not (data / "models" / "refits").exists()

    outcomes = refit(env, "--min-labels", "100", "--promote")
    social = outcomes["social"]
    assert (social["status"], social["labels"]) == ("skipped", 53)
    assert "majority fusion has nothing to fit" in social["reason"]
    o = outcomes["news"]
    assert (o["labels"], o["live_version"], o["status"]) == (150, live.version, "promoted")
    trial = o["trial"]
    # the live fusion's figures are its own answers on the labelled documents
    own = evaluate(live.predict_proba(texts), y)
    assert trial["live"]["macro_f1"] == pytest.approx(own["macro_f1"], abs=1e-4)
    assert trial["better"] and trial["gain"] > 2 * trial["standard_error"]
    assert trial["refit"]["log_loss"] < trial["live"]["log_loss"]
    assert trial["refit"]["macro_f1"] >= trial["live"]["macro_f1"]

    # the refit is written beside the others, the live file kept there by its version, and the
    # refit now in the live file's place, loading as the version it was written as
    candidate = Path(o["candidate"])
    assert candidate == data / "models" / "refits" / f"{o['candidate_version']}.json"
    assert (data / "models" / "refits" / f"{live.version}.json").is_file()
    assert o["promoted_to"] == str(live_file)
    promoted = ensemble_from_spec(read_spec(live_file), settings, live_file.parent)
    assert promoted.version == o["candidate_version"] != live.version
    assert promoted.fusion_name == "soft" and promoted.fusion.params()["temperatures"]
    spec = read_spec(live_file)
    assert spec["refit"]["of"] == live.version and spec["fitted_on"]["labels"] == 150
    assert spec["members"] == [m | {"weight": 1.0} for m in LEXICONS]
    # the promoted fusion, fitted on every label, does at least as well on them as the live one
    assert evaluate(promoted.predict_proba(texts), y)["macro_f1"] >= own["macro_f1"]

    engine = make_engine(env["RISKWIRE_DATABASE_URL"])
    with session_factory(engine)() as session:
        row = session.scalar(
            select(ModelVersionRow).where(ModelVersionRow.version == o["candidate_version"])
        )
        assert row is not None and row.name == "lexnews"
        assert row.description["refit_of"] == live.version and row.description["promoted"]
        assert row.description["labels"] == 150

    # from cron: no new labels since the last refit, so nothing is refitted
    again = refit(env, "--min-labels", "100", "--min-new", "1", "--only", "news")
    assert list(again) == ["news"]
    assert again["news"]["status"] == "skipped"
    assert "0 labels given since the last refit, fewer than 1" in again["news"]["reason"]
    with session_factory(engine).begin() as session:  # an analyst relabels a social post
        labels.put(session, env["LAST_ID"], "bo", "neutral", T0 + timedelta(days=1))
    engine.dispose()
    more = refit(env, "--min-labels", "100", "--min-new", "1", "--only", "news")
    # the promoted fusion was fitted on every news label there is: none is left to judge it on
    assert more["news"]["live_version"] == o["candidate_version"]
    assert more["news"]["status"] == "skipped"
    assert "fitted on 150 of these 150 labels: 0 others" in more["news"]["reason"]
    assert len(spec["fitted_on"]["texts"]) == 150

    # thirty news documents labelled since: the next refit is judged on those alone
    fresh = LabelledSet.read(FIXTURE)
    docs = [make_document(title=None, text=t, kind=Kind.NEWS) for t in fresh.texts]
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, docs)
        for doc, label in zip(docs, fresh.labels, strict=True):
            labels.put(session, doc.id, "ana", LABELS[label], T0 + timedelta(days=2))
    engine.dispose()
    judged = refit(env, "--min-labels", "100", "--only", "news")["news"]
    assert judged["labels"] == 180 and judged["status"] in ("kept", "better")
    trial = judged["trial"]
    assert (trial["rows"], trial["seen"]) == (30, 150)
    assert "on the 30 labels the live fusion was not fitted on" in judged["reason"]
    own = evaluate(promoted.predict_proba(fresh.texts), fresh.labels)
    assert trial["live"]["macro_f1"] == pytest.approx(own["macro_f1"], abs=1e-4)
    assert trial["better"] == (judged["status"] == "better")
    assert len(read_spec(Path(judged["candidate"]))["fitted_on"]["texts"]) == 180

    # rolled back: the live file the refit replaced goes live again, by its version
    back = riskwire("models", "promote", live.version, env=env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"is live as news in {live_file}" in back.stdout
    rolled = ensemble_from_spec(read_spec(live_file), settings, live_file.parent)
    assert rolled.version == live.version
    assert read_spec(data / "models" / "refits" / f"{o['candidate_version']}.json")["refit"]
    missing = riskwire("models", "promote", "lexnews-0000000000", env=env)
    assert missing.returncode == 2 and "no version of that name" in missing.stdout


def test_a_refit_of_an_ensemble_file_outside_the_data_folder_is_never_put_live(
    env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "mine.json"
    elsewhere.write_text(
        json.dumps(
            {"name": "mine", "members": LEXICONS, "fusion": {"strategy": "soft", "params": {}}}
        )
    )
    before = elsewhere.read_text()
    outcomes = refit(
        env,
        "--ensemble",
        str(elsewhere),
        "--min-labels",
        "100",
        "--promote",
        "--fusion",
        "stacking",
    )
    o = outcomes["mine"]
    assert o["labels"] == 203  # one ensemble: every labelled document
    assert o["status"] == "better" and "is outside" in o["reason"]
    assert elsewhere.read_text() == before
    assert read_spec(Path(o["candidate"]))["fusion"]["strategy"] == "stacking"
    bad = riskwire("labels", "refit", "--only", "nothing", env=env)
    assert bad.returncode == 2 and "has no ensemble 'nothing'" in bad.stdout
    table = riskwire(
        "labels", "refit", "--ensemble", str(elsewhere), "--min-labels", "100", env=env
    )
    assert table.returncode == 0, table.stdout + table.stderr
    assert "mine" in table.stdout and "refit" in table.stdout and "written to" in table.stdout


def test_the_refit_bench_scores_live_and_refit_fusions_on_rows_neither_saw(tmp_path: Path) -> None:
    """``riskwire bench refit`` with the three lexicons under an equal vote: the desk's labels are
    the packaged risk sentences' train split, the unseen rows their test split."""
    live_file = tmp_path / "lex.json"
    live_file.write_text(json.dumps({"name": "lex", "members": LEXICONS,
                                     "fusion": {"strategy": "soft", "params": {}}}))  # fmt: skip
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    args = ["bench", "refit", "--desk", str(PACKAGED), "--ensemble", str(live_file)]
    done = riskwire(*args, "--labels", "20,60", "--keep", str(FIXTURE), "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    held = LabelledSet.read(PACKAGED).split("test")
    assert (result["held_rows"], result["kept_rows"]) == (len(held), 30)
    assert [r["labels"] for r in result["rows"]] == [20, 60]
    settings = Settings(data_dir=tmp_path / "data")
    live = ensemble_from_spec(read_spec(live_file), settings, tmp_path)
    own = evaluate(live.predict_proba(held.texts), held.labels)
    for row in result["rows"]:
        assert row["held"]["live"]["macro_f1"] == pytest.approx(own["macro_f1"], abs=1e-4)
        refit = row["held"]["refit"]["macro_f1"] - row["held"]["live"]["macro_f1"]
        assert row["held"]["macro_f1"]["difference"] == pytest.approx(refit, abs=2e-4)
        assert row["held"]["macro_f1"]["low"] <= row["held"]["macro_f1"]["difference"]
    table = riskwire(*args, "--labels", "30", env=env)
    assert table.returncode == 0 and "held-out macro-F1" in table.stdout
    bad = riskwire(*args, "--labels", "3", env=env)
    assert bad.returncode == 2 and "each at least 5" in bad.stdout


def test_where_a_better_refit_goes_live(tmp_path: Path) -> None:
    """The shipped routing file names its ensembles: a refit of one goes to a file of that name
    among those trained here, which the lookup finds first; a file given by path outside the data
    folder is left alone; one inside it is replaced."""
    from models.factory import ENSEMBLE_DIR, ensemble_path
    from models.routing import ensemble_files
    from riskwire.refit import _promote_to

    settings = Settings(data_dir=tmp_path / "data")
    shipped = ensemble_files(ENSEMBLE_DIR / "default.yaml", settings)
    assert {name: (f.file, f.by_name) for name, f in shipped.items()} == {
        "news": (ENSEMBLE_DIR / "news.json", True), "social": (ENSEMBLE_DIR / "social.json", True)
    }  # fmt: skip
    trained = tmp_path / "data" / "models" / "ensembles" / "news.json"
    assert _promote_to(ENSEMBLE_DIR / "news.json", True, settings) == trained
    assert _promote_to(ENSEMBLE_DIR / "news.json", False, settings) is None
    trained.parent.mkdir(parents=True)
    trained.write_text((ENSEMBLE_DIR / "news.json").read_text())
    assert ensemble_path("news", settings) == trained  # what the router loads from now on
    assert _promote_to(trained, False, settings) == trained

"""``riskwire labels`` on a real SQLite database: labels added from the command line, exported as
the labelled data ``models eval`` reads, and the live models measured against them (known
answers: two of three resolved documents scored right)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.training import LabelledSet
from riskwire.records import LABELS
from storage import labels, make_engine, repository, session_factory, upgrade
from streams.pipeline.normalise import model_text
from tests.factories import make_document, make_score
from tests.riskwire.test_cli import riskwire

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PROBABILITIES = {"negative": (0.8, 0.1, 0.1), "neutral": (0.1, 0.8, 0.1),
                 "positive": (0.1, 0.1, 0.8)}  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Four documents scored live by ``v1`` (one also by ``v2``), and analysts' labels: d1
    negative (two agree), d2 positive, d3 and d4 tied (until the test adds a second neutral)."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    upgrade(url)
    engine = make_engine(url)
    docs = [make_document(title=f"Title {n}", text=f"Text {n}.") for n in range(4)]
    said = {0: "negative", 1: "negative", 2: "positive", 3: "neutral"}  # v1's labels
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, docs)
        repository.upsert_scores(session, [
            make_score(d.id, ticker=None, model_version="v1", label=said[n],
                       probabilities=PROBABILITIES[said[n]])
            for n, d in enumerate(docs)
        ] + [make_score(docs[0].id, ticker=None, model_version="v2", label="positive",
                        probabilities=PROBABILITIES["positive"])])  # fmt: skip
        for n, who, label in [(0, "ana", "negative"), (0, "bo", "negative"),
                              (1, "ana", "positive"), (2, "ana", "neutral"), (2, "bo", "positive"),
                              (3, "ana", "neutral"), (3, "cy", "negative")]:  # fmt: skip
            labels.put(session, docs[n].id, who, label, T0)
    engine.dispose()
    return {"RISKWIRE_DATABASE_URL": url, "RISKWIRE_DATA_DIR": str(tmp_path / "data"),
            "COLUMNS": "250", "DOC_IDS": ",".join(d.id for d in docs)}  # fmt: skip


def test_labels_are_added_exported_as_labelled_data_and_measured_against(
    env: dict[str, str], tmp_path: Path
) -> None:
    ids = env["DOC_IDS"].split(",")
    queued = riskwire("labels", "queue", "--json", env=env)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert json.loads(queued.stdout)["items"] == []  # every scored document has a label
    added = riskwire(
        "labels", "add", ids[3], "neutral", "--by", "bo", "--note", "guidance", env=env
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert f"{ids[3]}: neutral (by bo)" in added.stdout
    bad = riskwire("labels", "add", ids[3], "bearish", env=env)
    assert bad.returncode == 2 and "not one of negative, neutral, positive" in bad.stdout

    out = tmp_path / "labelled.jsonl"
    exported = riskwire("labels", "export", "--out", str(out), env=env)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "3 documents" in exported.stderr and "1 tied" in exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["document_id"], r["label"], r["labellers"]) for r in rows] == [
        (ids[0], "negative", 2), (ids[1], "positive", 1), (ids[3], "neutral", 3)
    ]  # fmt: skip
    assert rows[0]["text"] == model_text("Title 0", "Text 0.") == "Title 0. Text 0."
    data = LabelledSet.read(out)  # what `models eval --data` and `models train` read
    assert [LABELS[i] for i in data.labels] == ["negative", "positive", "neutral"]

    summary = riskwire("labels", "summary", "--json", env=env)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    report = json.loads(summary.stdout)
    assert (report["documents"], report["tied"], report["disputed"]) == (3, 1, 1)
    assert report["labellers"] == {"ana": 4, "bo": 3, "cy": 1}
    v1, v2 = report["models"]
    assert (v1["model_version"], v1["n"], v2["model_version"], v2["n"]) == ("v1", 3, "v2", 1)
    assert v1["accuracy"] == pytest.approx(2 / 3) and v2["accuracy"] == 0.0
    # negative F1 2/3 (one positive document called negative), neutral 1, positive 0
    assert v1["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert v1["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    replayed = json.loads(
        riskwire("labels", "summary", "--run", "replay-9", "--json", env=env).stdout
    )
    assert (replayed["run"], replayed["documents"], replayed["models"]) == ("replay-9", 3, [])
    table = riskwire("labels", "summary", env=env)
    assert table.returncode == 0 and "0.667" in table.stdout and "v1" in table.stdout

    listed = json.loads(riskwire("labels", "list", "--by", "bo", "--json", env=env).stdout)
    assert {(r["document_id"], r["label"]) for r in listed["labels"]} == {
        (ids[0], "negative"), (ids[2], "positive"), (ids[3], "neutral")
    }  # fmt: skip
    removed = riskwire("labels", "remove", ids[3], "--by", "bo", env=env)
    assert removed.returncode == 0
    again = riskwire("labels", "remove", ids[3], "--by", "bo", env=env)
    assert again.returncode == 2 and "has no label" in again.stdout

    # in bulk: what can be a label is stored (once, however often imported), the rest is refused
    bulk = tmp_path / "bulk.jsonl"
    bulk.write_text(
        json.dumps({"document_id": ids[1], "label": "positive", "labeller": "dee"}) + "\n"
        + "{not json\n"
        + json.dumps({"document_id": "f" * 32, "label": "negative"}) + "\n"
        + json.dumps({"document_id": ids[2], "label": "bearish"}) + "\n"
        + json.dumps(["a", "list"]) + "\n"
    )  # fmt: skip
    for _ in range(2):
        imported = riskwire("labels", "import", str(bulk), "--by", "eve", "--json", env=env)
        assert imported.returncode == 1, imported.stdout + imported.stderr
        report = json.loads(imported.stdout)
        assert report["stored"] == 1
        assert [(r["where"], r["reason"][:14]) for r in report["refused"]] == [
            ("bulk.jsonl:2", "not valid JSON"), ("bulk.jsonl:3", "no document 'f"),
            ("bulk.jsonl:4", "label 'bearish"), ("bulk.jsonl:5", "not a JSON obj"),
        ]  # fmt: skip
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"document_id,label,note\n{ids[2]},positive,from the sheet\n")
    from_sheet = riskwire("labels", "import", str(sheet), "--by", "eve", env=env)
    assert from_sheet.returncode == 0 and "1 labels stored; 0 refused" in from_sheet.stdout
    listed = json.loads(riskwire("labels", "list", "--json", env=env).stdout)["labels"]
    assert {(r["labeller"], r["label"], r["note"]) for r in listed if r["labeller"] in "dee eve"} == {
        ("dee", "positive", None), ("eve", "positive", "from the sheet")
    }  # fmt: skip

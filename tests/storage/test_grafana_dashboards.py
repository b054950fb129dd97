"""The dashboards in grafana/ are code: their datasources are provisioned ones, and every SQL query
in them (panels, variables, annotations) runs against the real PostgreSQL schema and finds data.
(The stream-health dashboard reads the workers' Prometheus metrics instead: its queries run against
a real Prometheus scraping a real worker in ``tests/streams/test_metrics.py``.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, select, text

from ingest.feeds import Health, store_health
from riskwire.records import DeadLetter
from riskwire.replay import ReplayRunner, ReplaySpec, create_job
from riskwire.settings import load_settings
from storage import labels, make_engine, repository, session_factory, upgrade
from storage.delivery import Targets
from storage.tables import ScoreRow
from tests.factories import (
    T0,
    TWO_VERSIONS,
    make_alert,
    make_document,
    make_score,
    make_vote,
)
from tests.replay_helpers import DAY0, lexicon_ensemble, run_live, world

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SQL_DASHBOARDS = [p for p in DASHBOARDS if '"rawSql"' in p.read_text()]


def queries(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every (place, SQL) in a dashboard: rawSql of targets, and query-variable definitions."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("rawSql"), str):
            found.append((where, node["rawSql"]))
        if node.get("type") == "query" and isinstance(node.get("query"), str):
            found.append((f"{where}/variable {node.get('name')}", node["query"]))
        for key, value in node.items():
            found += queries(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += queries(value, f"{where}[{i}]")
    return found


def render(sql: str, variables: dict[str, str]) -> str:
    """What Grafana sends: macros and variables substituted."""
    sql = re.sub(
        r"\$__timeFilter\(([\w.]+)\)",
        r"\1 BETWEEN '2026-01-01T00:00:00Z' AND '2027-01-01T00:00:00Z'",
        sql,
    )
    for name, value in variables.items():
        sql = sql.replace(f"${name}", value)
    assert "$" not in sql, f"unsubstituted variable or macro in: {sql}"
    return sql


def test_dashboards_use_the_provisioned_datasource_and_unique_panel_ids() -> None:
    assert DASHBOARDS, "no dashboards in grafana/dashboards"
    uids = {
        d["uid"]
        for f in (GRAFANA / "provisioning/datasources").glob("*.yaml")
        for d in yaml.safe_load(f.read_text())["datasources"]
    }
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        text_ = path.read_text()
        used = set(re.findall(r'"uid": "([^"]+)"', text_)) - {dashboard["uid"]}
        assert used <= uids, (path.name, used - uids)
        assert queries(dashboard) or '"expr"' in text_, path.name


@pytest.mark.integration
@pytest.mark.parametrize("path", SQL_DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_runs_on_the_real_schema_and_finds_data(
    path: Path, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    settings = load_settings(database_url=postgres_url, data_dir=tmp_path)
    sessions = session_factory(make_engine(postgres_url))
    ensemble = lexicon_ensemble()
    # alerts queued for Grafana and Alertmanager (the deliveries table), one dead letter, one label
    run_live(sessions, settings, ensemble, world(), Targets(grafana=True, alertmanager=True))
    with sessions.begin() as session:
        letter = DeadLetter.of("normalise", "not valid JSON", "{", occurred_at=DAY0)
        repository.insert_dead_letters(session, [letter])
        health = Health("wire", "news", "https://x/rss", 60, 600, started_at=DAY0)
        store_health(session, [health.row(DAY0)])
        scored = session.scalars(select(ScoreRow.document_id).where(ScoreRow.run_id == "live"))
        labels.put(session, next(iter(scored)), "ana", "negative", DAY0)  # an analyst's label
    job = create_job(
        sessions,
        settings,
        ReplaySpec(start=DAY0, end=DAY0.replace(day=4), model_version=ensemble.version),
    )
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(job) == "done"

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        for where, sql in queries(json.loads(path.read_text())):
            rows = conn.execute(text(render(sql, {"run": job, "ticker": "ACME"}))).all()
            assert rows, f"{path.name}{where} found nothing"
    engine.dispose()


def panel_sql(title: str, dashboard: str = "ticker.json") -> str:
    panels = json.loads((GRAFANA / "dashboards" / dashboard).read_text())["panels"]
    (panel,) = [p for p in panels if p["title"] == title]
    return render(panel["targets"][0]["rawSql"], {"ticker": "ACME"})


def test_the_ticker_panels_show_a_row_per_document_and_alert_with_the_counted_score_and_votes(
    postgres_url: str,
) -> None:
    """A document scored twice in the live run (the models changed while it was redelivered),
    and evidence of two alerts: one row each, with the score its ticker counted (its rolling row)
    and the votes of that score's members, as the API shows them."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    doc = make_document(title="Recall widens")
    counted = (make_vote("finlex", "finlex-1", "negative"), make_vote("minilm", "ft-2", "negative"))
    later = (make_vote("m1", "m1-1", "positive"),)
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, [doc])
        repository.upsert_scores(session, [
            make_score(doc.id, score=-0.7, model_version="test-1", votes=counted),
            make_score(doc.id, score=0.6, model_version="test-2", votes=later),  # sorts last
        ])  # fmt: skip
        repository.upsert_ticker_sentiment(session, [
            {"run_id": "live", "ticker": "ACME", "document_id": doc.id, "published_at": T0,
             "score": -0.7, "label": "negative", "window_documents": 1,
             "window_mean_score": -0.7, "window_negative_share": 1.0}
        ])  # fmt: skip
        repository.register_model_versions(session, TWO_VERSIONS, T0)  # who cast which votes
        repository.upsert_alerts(session, [
            make_alert(evidence=(doc.id,)), make_alert(evidence=(doc.id,)),
        ])  # fmt: skip
    with engine.connect() as conn:
        evidence = conn.execute(
            text(panel_sql("Documents behind the alerts, with their member votes"))
        ).all()
        documents = conn.execute(text(panel_sql("All $ticker documents in range"))).all()
    engine.dispose()
    assert [(r.title, r.label, float(r.score)) for r in evidence] == [
        ("Recall widens", "negative", -0.7)
    ] * 2  # one row per alert it is evidence of
    assert {r.member_votes for r in evidence} == {"finlex: negative, minilm: negative"}
    assert [(r.label, float(r.score), r.member_votes) for r in documents] == [
        ("negative", -0.7, "finlex: negative, minilm: negative")
    ]


def test_member_agreement_compares_each_vote_with_the_live_score_of_its_own_ensemble(
    postgres_url: str,
) -> None:
    """A document scored twice in the live run by two ensembles that disagree: each member's vote
    is compared with the fused label of the ensemble it voted in, once; votes cast only for a replay
    run are not live model health; a score whose version the registry does not know is compared with
    every vote of its document, as before the registry."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    doc, unregistered = make_document(), make_document()
    first = (make_vote("finlex", "finlex-1", "negative"), make_vote("minilm", "ft-2", "positive"))
    later = (make_vote("m1", "m1-1", "positive"),)
    replayed = (make_vote("m1", "m1-9", "neutral"),)
    other = (make_vote("finlex", "finlex-0", "negative"),)
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, [doc, unregistered])
        repository.upsert_scores(session, [
            make_score(doc.id, score=-0.7, model_version="test-1", votes=first),
            make_score(doc.id, score=0.6, model_version="test-2", votes=later),
            make_score(doc.id, score=0.0, model_version="replay-9", votes=replayed,
                       run_id="replay-1"),
            make_score(unregistered.id, score=-0.5, model_version="old-0", votes=other),
        ])  # fmt: skip
        repository.register_model_versions(session, TWO_VERSIONS, T0)
    with engine.connect() as conn:
        rows = conn.execute(
            text(panel_sql("Member agreement with the fused label", "model-health.json"))
        ).all()
    engine.dispose()
    assert [(r.member, float(r.agreement), r.votes) for r in rows] == [
        ("finlex", 1.0, 2),  # test-1's negative, and old-0's (unregistered) negative
        ("m1", 1.0, 1),  # test-2's positive; the replay's neutral vote is not counted
        ("minilm", 0.0, 1),  # voted positive in test-1, which fused negative
    ]


def test_the_prometheus_dashboard_asks_for_tables_where_it_shows_tables() -> None:
    """PromQL panels: a table panel's queries are instant ones in table format (merged on their
    labels), a graph's are range queries; their queries run in ``tests/streams/test_metrics.py``."""
    dashboard = json.loads((GRAFANA / "dashboards/stream.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "riskwire-prometheus", panel["title"]
        table = panel["type"] == "table"
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"] == panel["datasource"]
            assert (target["format"], target["instant"], target["range"]) == (
                ("table", True, False) if table else ("time_series", False, True)
            ), panel["title"]
        if table and len(panel["targets"]) > 1:
            assert panel["transformations"] == [{"id": "merge", "options": {}}], panel["title"]


def test_the_analysts_panel_counts_agreement_and_the_negatives_each_side_missed(
    postgres_url: str,
) -> None:
    """Three analysts' labels of two documents that one live model version scored: the analysts'
    negative it called positive, and the neutral it called negative, counted apart."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    first, second = make_document(), make_document()
    with session_factory(engine).begin() as session:
        repository.upsert_documents(session, [first, second])
        repository.upsert_scores(session, [
            make_score(first.id, score=0.6, model_version="test-1"),  # positive
            make_score(second.id, score=-0.7, model_version="test-1"),  # negative
        ])  # fmt: skip
        labels.put(session, first.id, "ana", "negative", T0)
        labels.put(session, first.id, "bo", "positive", T0)
        labels.put(session, second.id, "ana", "neutral", T0)
    title = "Live models against analysts' labels (riskwire labels summary for F1 and calibration)"
    with engine.connect() as conn:
        (row,) = conn.execute(text(panel_sql(title, "model-health.json"))).all()
    engine.dispose()
    assert tuple(row)[:3] == ("test-1", 2, 3)
    assert float(row.agreement) == pytest.approx(0.333, abs=1e-3)
    assert tuple(row)[4:] == (1, 1)

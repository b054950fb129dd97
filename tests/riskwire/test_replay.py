"""Replay and backfill jobs on SQLite and PostgreSQL: the same answers as live, beside live rows,
resumable, cancellable, comparable across model versions."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from models.ensemble import Ensemble
from riskwire.replay import (
    ReplayError,
    ReplayRunner,
    ReplaySpec,
    create_job,
    mark_interrupted,
    request_cancel,
)
from riskwire.replay_report import render_report
from riskwire.settings import Settings, load_settings
from storage import labels, make_engine, repository, session_factory, upgrade
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    ReplayRunRow,
    ScoreRow,
    TickerSentimentRow,
)
from streams.pipeline import NegativeSurgeRule
from tests.models.conftest import FixedMember
from tests.replay_helpers import (
    DAY0,
    alerts_of,
    lexicon_ensemble,
    run_live,
    scores_of,
    sentiment_of,
    world,
)

END = DAY0 + timedelta(days=2)


@pytest.fixture
def empty(database_url: str, tmp_path: Path) -> tuple[Settings, sessionmaker[Session]]:
    """A migrated database of this test's own, and settings pointing at it."""
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path)
    return settings, session_factory(make_engine(database_url))


@pytest.fixture
def setup(
    empty: tuple[Settings, sessionmaker[Session]],
) -> tuple[Settings, sessionmaker[Session], Ensemble]:
    """The two-day world, processed 'live'."""
    settings, sessions = empty
    ensemble = lexicon_ensemble()
    run_live(sessions, settings, ensemble, world())
    return settings, sessions, ensemble


def replay(
    settings: Settings,
    sessions: sessionmaker[Session],
    ensemble: Ensemble,
    page_size: int = 50,
    **spec: object,
) -> tuple[str, str]:
    fields: dict[str, object] = {"start": DAY0, "end": END, "model_version": ensemble.version}
    fields.update(spec)
    job = create_job(sessions, settings, ReplaySpec(**fields))  # type: ignore[arg-type]
    status = ReplayRunner(settings, sessions, lambda: ensemble, page_size=page_size).run(job)
    return job, status


def job_row(sessions: sessionmaker[Session], job_id: str) -> ReplayRunRow:
    with sessions() as session:
        job = session.get(ReplayRunRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def test_a_replay_of_a_live_period_gives_live_answers_beside_live_rows(setup) -> None:
    settings, sessions, ensemble = setup
    with sessions() as session:
        live = (
            scores_of(session, "live"),
            sentiment_of(session, "live"),
            alerts_of(session, "live"),
        )
    assert len(live[2]) == 3  # ACME twice, BOLT once

    job, status = replay(settings, sessions, ensemble)

    assert status == "done"
    with sessions() as session:
        assert (
            scores_of(session, "live"),
            sentiment_of(session, "live"),
            alerts_of(session, "live"),
        ) == live  # live rows untouched
        assert scores_of(session, job) == live[0]
        assert sentiment_of(session, job) == live[1]
        assert alerts_of(session, job) == live[2]
        replayed = session.scalars(select(AlertRow).where(AlertRow.run_id == job)).all()
        assert {a.id for a in replayed}.isdisjoint(live_ids(session))
    row = job_row(sessions, job)
    assert (row.processed, row.total, row.cached, row.rescored) == (432, 432, 432, 0)
    assert (row.alerts_matched, row.alerts_gained, row.alerts_lost) == (3, 0, 0)
    assert row.label_agreement == 1.0 and row.label_flips == 0
    report = row.report
    assert report is not None and [a["status"] for a in report["alerts"]] == ["matched"] * 3
    assert set(report["timeline"]["tickers"]) == {"ACME", "BOLT", "CRUX"}
    plot = Path(report["plot"])
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def live_ids(session: Session) -> set[str]:
    return set(session.scalars(select(AlertRow.id).where(AlertRow.run_id == "live")))


def test_an_interrupted_replay_resumes_from_its_checkpoint_to_the_same_result(setup) -> None:
    settings, sessions, ensemble = setup
    whole, _ = replay(settings, sessions, ensemble)

    pages = []

    def crash_after_three_pages(done: int, total: int) -> None:
        pages.append(done)
        if len(pages) == 3:
            raise RuntimeError("power cut")

    job = create_job(
        sessions, settings, ReplaySpec(start=DAY0, end=END, model_version=ensemble.version)
    )
    # a checkpoint every 100 documents (pages of about 45): the writer stores page 4, in flight
    # when the third crashes, past the checkpoint of page 3
    runner = ReplayRunner(settings, sessions, lambda: ensemble, page_size=50, checkpoint_every=100)
    assert runner.run(job, crash_after_three_pages) == "failed"
    interrupted = job_row(sessions, job)
    assert "power cut" in (interrupted.error or "")
    checkpoint = interrupted.checkpoint
    assert checkpoint and 0 < checkpoint["counts"]["processed"] < interrupted.processed

    assert runner.run(job) == "failed"  # a failed job runs again only when asked to resume
    resumed: list[int] = []
    assert runner.run(job, lambda done, total: resumed.append(done), resume=True) == "done"
    # from the checkpoint (page 3), page 4 is done again and lands on the count it had: not
    # counted twice
    assert resumed[0] == interrupted.processed
    with sessions() as session:
        assert scores_of(session, job) == scores_of(session, whole)
        assert sentiment_of(session, job) == sentiment_of(session, whole)
        assert alerts_of(session, job) == alerts_of(session, whole)
    done, complete = job_row(sessions, job), job_row(sessions, whole)
    assert (done.processed, done.cached, done.rescored) == (432, 432, 0)
    assert done.alerts == complete.alerts


def test_cancel_stops_a_running_job_which_can_then_be_resumed(setup) -> None:
    settings, sessions, ensemble = setup
    job = create_job(
        sessions, settings, ReplaySpec(start=DAY0, end=END, model_version=ensemble.version)
    )
    runner = ReplayRunner(
        settings, sessions, lambda: ensemble, page_size=40, checkpoint_every=10**6
    )
    seen: list[int] = []

    def cancel_from_elsewhere(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 2:
            assert request_cancel(sessions, job) == "cancelling"

    assert runner.run(job, cancel_from_elsewhere) == "cancelled"
    cancelled = job_row(sessions, job)
    assert cancelled.status == "cancelled" and cancelled.processed < 432
    # no checkpoint was due yet: cancelling checkpoints the pages it stored
    assert cancelled.checkpoint["counts"]["processed"] == cancelled.processed
    assert runner.run(job) == "cancelled"  # stays cancelled unless resumed
    assert runner.run(job, resume=True) == "done"
    with sessions() as session:
        assert alerts_of(session, job) == alerts_of(session, "live")


def test_a_job_that_has_not_started_is_cancelled_at_once(setup) -> None:
    settings, sessions, ensemble = setup
    job = create_job(sessions, settings, ReplaySpec(start=DAY0, end=END))
    assert request_cancel(sessions, job) == "cancelled"
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(job) == "cancelled"


def test_a_sub_period_warms_up_on_the_window_before_it(setup) -> None:
    """Starting inside the BOLT burst, the replay still knows the documents before the start."""
    settings, sessions, ensemble = setup
    start, end = DAY0 + timedelta(hours=15), DAY0 + timedelta(hours=30)
    job, status = replay(settings, sessions, ensemble, start=start, end=end)
    assert status == "done"
    with sessions() as session:
        live = {k: v for k, v in sentiment_of(session, "live").items() if start <= v[0] < end}
        assert sentiment_of(session, job) == live
        assert set(alerts_of(session, job)) <= set(alerts_of(session, "live"))
        assert not [d for d in scores_of(session, job) if d < "000045"]  # nothing before start


def test_rescoring_with_the_same_model_gives_the_same_answers(setup) -> None:
    settings, sessions, ensemble = setup
    job, status = replay(settings, sessions, ensemble, rescore=True)
    assert status == "done"
    row = job_row(sessions, job)
    assert (row.rescored, row.cached) == (432, 0)
    with sessions() as session:
        live, again = scores_of(session, "live"), scores_of(session, job)
        assert live.keys() == again.keys()
        for doc, values in live.items():
            assert again[doc][:2] == values[:2]
            assert again[doc][2:] == pytest.approx(values[2:], abs=1e-9)
        assert alerts_of(session, job) == alerts_of(session, "live")


def test_two_model_versions_are_compared_alert_by_alert_and_label_by_label(setup) -> None:
    """A model that calls everything neutral loses every alert and flips every negative label."""
    settings, sessions, _ = setup
    calm = Ensemble([FixedMember("calm", [0.1, 0.8, 0.1])], name="calm")
    job, status = replay(settings, sessions, calm, model_version=None)
    assert status == "done"
    row = job_row(sessions, job)
    assert row.model_version == calm.version and row.rescored == 432
    assert (row.alerts, row.alerts_matched, row.alerts_gained, row.alerts_lost) == (0, 0, 0, 3)
    with sessions() as session:
        live_labels = [v[1] for v in scores_of(session, "live").values()]
    report = row.report
    assert report is not None
    flips = report["scores"]["flips"]
    assert flips == {
        f"{label}->neutral": live_labels.count(label) for label in ("negative", "positive")
    }
    assert row.label_flips == sum(flips.values())
    assert row.label_agreement == pytest.approx(live_labels.count("neutral") / 432)


def test_the_report_judges_the_run_and_its_baseline_by_the_analysts_labels(setup) -> None:
    """Analysts agree with live on two negatives and a neutral; a model that calls everything
    neutral gets one of the three right. Without labels the report has no such section."""
    settings, sessions, _ = setup
    with sessions() as session:
        live = scores_of(session, "live")
    negatives = sorted(d for d, v in live.items() if v[1] == "negative")[:2]
    neutral = sorted(d for d, v in live.items() if v[1] == "neutral")[:1]
    assert len(negatives) == 2 and len(neutral) == 1
    calm = Ensemble([FixedMember("calm", [0.1, 0.8, 0.1])], name="calm")
    before, _status = replay(settings, sessions, calm, model_version=None)
    report = job_row(sessions, before).report
    assert report is not None and report["analysts"] is None
    with sessions.begin() as session:
        for doc in negatives:
            labels.put(session, doc, "ana", "negative", DAY0)
        labels.put(session, neutral[0], "ana", "neutral", DAY0)
    job, status = replay(settings, sessions, calm, model_version=None)
    assert status == "done"
    report = job_row(sessions, job).report
    assert report is not None
    judged = report["analysts"]
    assert judged["documents"] == 3
    (replayed,) = judged["runs"][job]
    (as_live,) = judged["runs"]["live"]
    assert (replayed["model_version"], replayed["n"]) == (calm.version, 3)
    assert replayed["accuracy"] == pytest.approx(1 / 3) and as_live["accuracy"] == 1.0
    console = Console(record=True, width=200)
    render_report(report, console)
    assert "against analysts' labels (3 documents)" in console.export_text()


def test_a_model_version_that_is_neither_cached_nor_loadable_fails_with_the_reason(setup) -> None:
    settings, sessions, ensemble = setup
    job, status = replay(settings, sessions, ensemble, model_version="ensemble-from-last-year")
    assert status == "failed"
    error = job_row(sessions, job).error or ""
    assert "ensemble-from-last-year" in error and ensemble.version in error
    with sessions() as session:
        assert not scores_of(session, job)


def test_a_ticker_filter_replays_only_those_tickers(setup) -> None:
    settings, sessions, ensemble = setup
    job, status = replay(settings, sessions, ensemble, tickers=("BOLT",))
    assert status == "done"
    with sessions() as session:
        assert {t for t, _ in sentiment_of(session, job)} == {"BOLT"}
        assert [k[1] for k in alerts_of(session, job)] == ["BOLT"]
        live_bolt = {k: v for k, v in sentiment_of(session, "live").items() if k[0] == "BOLT"}
        assert sentiment_of(session, job) == live_bolt


def test_different_rules_change_the_alerts_not_the_scores(setup) -> None:
    settings, sessions, ensemble = setup
    strict = (NegativeSurgeRule(name="surge_strict", min_documents=9),)
    loose = (NegativeSurgeRule(name="surge_loose", min_documents=2, negative_share=0.5),)
    strict_job, _ = replay(settings, sessions, ensemble, rules=strict)
    loose_job, _ = replay(settings, sessions, ensemble, rules=loose)
    with sessions() as session:
        assert scores_of(session, strict_job) == scores_of(session, loose_job)
        assert not alerts_of(session, strict_job)
        assert len(alerts_of(session, loose_job)) > 3
        assert {k[0] for k in alerts_of(session, loose_job)} == {"surge_loose"}
    assert job_row(sessions, strict_job).rules["rules"][0]["min_documents"] == 9


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"start": END, "end": DAY0}, "is not before"),
        ({"start": DAY0.replace(tzinfo=None), "end": END}, "must carry a timezone"),
        ({"start": DAY0, "end": None}, "needs both --from and --to"),
        ({"start": DAY0, "end": END, "source": "/nope.jsonl"}, "neither 'db' nor a readable file"),
        ({"source": "db", "kind": "backfill"}, "cannot read from 'db'"),
    ],
)
def test_impossible_jobs_are_refused_before_they_are_recorded(spec: dict, reason: str) -> None:
    with pytest.raises(ReplayError, match=reason):
        ReplaySpec(**spec).check()


ARCHIVE_LINES = [
    {"kind": "news", "source": "archive", "title": "Acme shares plunge after profit warning",
     "tickers": ["ACME"], "published_at": "2025-06-02T09:00:00Z", "id": "a1"},
    {"kind": "news", "source": "archive", "title": "Acme cuts outlook as losses widen",
     "tickers": ["ACME"], "published_at": "2025-06-02T09:20:00Z", "id": "a2"},
    {"kind": "news", "source": "archive", "title": "Acme recalls product, shares slump",
     "tickers": ["ACME"], "published_at": "2025-06-02T09:40:00Z", "id": "a3"},
    {"kind": "news", "source": "archive", "title": "Acme shares slump again as warning widens",
     "tickers": ["ACME"], "published_at": "2025-06-02T10:00:00Z", "id": "a4"},
    {"kind": "social", "source": "archive", "text": "$BOLT reports record profit",
     "published_at": "2025-06-02T10:05:00Z", "id": "a5"},
    {"kind": "news", "source": "archive", "title": "Acme shares plunge after profit warning",
     "tickers": ["ACME"], "published_at": "2025-06-02T09:00:00Z", "id": "a1"},  # syndicated copy
    {"kind": "news", "source": "archive", "published_at": "2025-06-02T10:10:00Z", "id": "bad"},
]  # fmt: skip


def test_backfill_imports_an_archive_once_and_computes_everything_as_live_history(
    empty: tuple[Settings, sessionmaker[Session]], tmp_path: Path
) -> None:
    settings, sessions = empty
    archive = tmp_path / "archive.jsonl"
    lines = [json.dumps(x) for x in ARCHIVE_LINES] + ["{not json"]
    archive.write_text("\n".join(lines) + "\n")
    ensemble = lexicon_ensemble()

    for _ in range(2):  # importing the same archive twice stores nothing twice
        job = create_job(sessions, settings, ReplaySpec(source=str(archive), kind="backfill"))
        assert ReplayRunner(settings, sessions, lambda: ensemble).run(job) == "done"

    with sessions() as session:
        count = lambda table: session.scalar(select(func.count()).select_from(table))  # noqa: E731
        assert count(DocumentRow) == 5
        assert session.scalar(select(func.count()).where(ScoreRow.run_id == "live")) == 5
        assert session.scalar(select(func.count()).where(TickerSentimentRow.run_id == "live")) == 5
        alerts = alerts_of(session, "live")
        assert [k[1] for k in alerts] == ["ACME"]
        letters = session.scalars(select(DeadLetterRow)).all()
        assert len(letters) == 2 and {d.stage for d in letters} == {"backfill"}
        assert any("no title or text" in d.reason for d in letters)
        assert any("not valid JSON" in d.reason for d in letters)
    row = job_row(sessions, job)
    assert (row.run_id, row.processed, row.rejected, row.cached) == ("live", 5, 2, 5)


def test_cached_scores_come_from_one_run_and_those_it_lacks_from_another(setup) -> None:
    """A version replayed before is read from one run, not once per run holding it; documents that
    run lacks take their cached score from another run instead of being scored again."""
    settings, sessions, ensemble = setup
    first, _ = replay(settings, sessions, ensemble)
    with sessions.begin() as session:
        expected = scores_of(session, first)
        ids = sorted(expected)
        # each run loses other documents' scores; `first`, still holding more, is read from, and
        # what it lost is found in live
        for run, gone in (("live", ids[:40]), (first, ids[40:70])):
            session.execute(
                delete(ScoreRow).where(ScoreRow.run_id == run, ScoreRow.document_id.in_(gone))
            )
        assert repository.cache_run(session, ensemble.version, DAY0, END) == first

    def no_models() -> Ensemble:
        raise AssertionError("nothing should be scored again")

    job = create_job(
        sessions, settings, ReplaySpec(start=DAY0, end=END, model_version=ensemble.version)
    )
    assert ReplayRunner(settings, sessions, no_models, page_size=50).run(job) == "done"
    row = job_row(sessions, job)
    assert (row.rescored, row.cached) == (0, row.processed)
    with sessions() as session:
        assert scores_of(session, job) == expected
        assert sentiment_of(session, job) == sentiment_of(session, first)
        assert alerts_of(session, job) == alerts_of(session, first)


def test_the_cache_run_is_the_one_holding_most_scores_live_on_a_tie(setup) -> None:
    settings, sessions, ensemble = setup
    with sessions() as session:
        assert repository.cache_run(session, ensemble.version, DAY0, END) == "live"
        assert repository.cache_run(session, "no-such-version", DAY0, END) is None
    replay(settings, sessions, ensemble)  # a second run holding every score: a tie
    with sessions() as session:
        assert repository.cache_run(session, ensemble.version, DAY0, END) == "live"


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_large_job_writes_from_a_child_process_with_the_same_result(setup, start: str) -> None:
    """Jobs past a size write (and draw their plot) from a child process, forked or spawned; the
    rows are the same."""
    settings, sessions, ensemble = setup
    job = create_job(
        sessions, settings, ReplaySpec(start=DAY0, end=END, model_version=ensemble.version)
    )
    runner = ReplayRunner(
        settings, sessions, lambda: ensemble, page_size=100, process_writer_from=0,
        process_start=start,
    )  # fmt: skip
    assert runner.run(job) == "done"
    with sessions() as session:
        assert scores_of(session, job) == scores_of(session, "live")
        assert sentiment_of(session, job) == sentiment_of(session, "live")
        assert alerts_of(session, job) == alerts_of(session, "live")
    row = job_row(sessions, job)
    assert row.processed == 432
    assert Path(row.report["plot"]).read_bytes().startswith(b"\x89PNG")


def test_a_job_stopped_by_its_user_is_cancelled_and_resumable(setup) -> None:
    settings, sessions, ensemble = setup
    job = create_job(
        sessions, settings, ReplaySpec(start=DAY0, end=END, model_version=ensemble.version)
    )
    with sessions.begin() as session:
        row = session.get(ReplayRunRow, job)
        assert row is not None
        row.status = "running"
    mark_interrupted(sessions, job)
    assert job_row(sessions, job).status == "cancelled"
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(job, resume=True) == "done"


def test_a_replay_from_an_archive_file_writes_beside_live(
    empty: tuple[Settings, sessionmaker[Session]], tmp_path: Path
) -> None:
    settings, sessions = empty
    archive = tmp_path / "archive.jsonl"
    archive.write_text("\n".join(json.dumps(x) for x in ARCHIVE_LINES) + "\n")
    ensemble = lexicon_ensemble()
    backfill = create_job(sessions, settings, ReplaySpec(source=str(archive), kind="backfill"))
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(backfill) == "done"
    spec = ReplaySpec(
        source=str(archive),
        start=DAY0.replace(year=2025, month=6),
        end=DAY0.replace(year=2025, month=7),
    )
    job = create_job(sessions, settings, spec)
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(job) == "done"
    with sessions() as session:
        assert scores_of(session, job) == scores_of(session, "live")  # cached from the backfill
        assert alerts_of(session, job) == alerts_of(session, "live")
        assert session.scalar(select(func.count()).select_from(DocumentRow)) == 5
    row = job_row(sessions, job)
    assert (row.run_id, row.processed, row.cached, row.alerts_matched) == (job, 5, 5, 1)


def test_alerts_are_compared_as_matched_shifted_gained_or_lost(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The same episode caught on another aligned window is 'shifted', not one gained and one lost."""
    from riskwire.records import Alert, AlertState, Severity, stable_id
    from riskwire.replay_report import Scope, compare_alerts
    from storage.repository import upsert_alerts

    upgrade(sqlite_url)
    sessions = session_factory(make_engine(sqlite_url))

    def alert(run: str, ticker: str, start_h: float) -> Alert:
        start = DAY0 + timedelta(hours=start_h)
        return Alert(
            id=stable_id(run, ticker, str(start_h)), run_id=run, rule="surge", ticker=ticker,
            severity=Severity.WARNING, state=AlertState.FIRING, window_start=start,
            window_end=start + timedelta(hours=2), event_time=start + timedelta(hours=2),
            values={}, thresholds={}, evidence=(), explanation="",
        )  # fmt: skip

    with sessions.begin() as session:
        upsert_alerts(session, [
            alert("new", "SAME", 1), alert("old", "SAME", 1),      # matched
            alert("new", "MOVE", 10.5), alert("old", "MOVE", 10),  # shifted
            alert("new", "GAIN", 3),                               # gained
            alert("old", "LOSS", 5), alert("old", "MOVE", 20),     # lost (twice)
        ])  # fmt: skip
    with sessions() as session:
        found = compare_alerts(session, "new", "old", Scope(DAY0, END))
    status = {(a["ticker"], a["window_start"][11:16]): a["status"] for a in found}
    assert status == {
        ("SAME", "01:00"): "matched", ("MOVE", "10:30"): "shifted", ("GAIN", "03:00"): "gained",
        ("LOSS", "05:00"): "lost", ("MOVE", "20:00"): "lost",
    }  # fmt: skip
    shifted = next(a for a in found if a["status"] == "shifted")
    assert shifted["baseline_window_start"] == (DAY0 + timedelta(hours=10)).isoformat()


def test_a_backfill_clusters_near_duplicates_and_counts_each_story_once(
    empty: tuple[Settings, sessionmaker[Session]], tmp_path: Path
) -> None:
    settings, sessions = empty
    wire = {"kind": "news", "tickers": ["ACME"], "published_at": "2025-06-02T09:00:00Z"}
    lines = [
        {**wire, "source": "wire-a", "title": "Acme shares plunge after profit warning"},
        {**wire, "source": "wire-b", "title": "(Reuters) - Acme shares plunge after profit warning",
         "published_at": "2025-06-02T09:03:00Z"},
        {**wire, "source": "wire-c", "title": "RT @desk: Acme shares plunge after profit warning",
         "published_at": "2025-06-02T09:05:00Z"},
        {**wire, "source": "wire-a", "title": "Acme cuts outlook as losses widen",
         "published_at": "2025-06-02T09:20:00Z"},
    ]  # fmt: skip
    archive = tmp_path / "copies.jsonl"
    archive.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ensemble = lexicon_ensemble()
    job = create_job(sessions, settings, ReplaySpec(source=str(archive), kind="backfill"))
    assert ReplayRunner(settings, sessions, lambda: ensemble).run(job) == "done"
    with sessions() as session:
        docs = session.scalars(select(DocumentRow).order_by(DocumentRow.published_at)).all()
        assert len(docs) == 4
        first = docs[0]
        assert [(d.story_id == first.id, d.novelty) for d in docs] == [
            (True, 1.0), (True, 0.5), (True, 0.25), (False, 1.0)
        ]  # fmt: skip
        rows = sentiment_of(session, "live")
    # the copies add nothing to ACME's windows: two stories, two rolling rows
    assert len(rows) == 2 and max(r[2] for r in rows.values()) == 2

"""Processing that survives crashes, against the real broker and PostgreSQL.

20,000 records go through the whole worker four times: once uninterrupted; once with the worker
SIGKILLed part of the way and restarted (a); once with a second worker joining (a rebalance) and
the first then SIGKILLed (another), the second finishing alone (b); once with four workers coming
and two of them going, one stopped (SIGTERM) and one SIGKILLed, a rebalance at each step. Every
stored result (documents, scores, rolling rows, aggregates, alerts, alert events) must be
identical to the uninterrupted run's: nothing lost, nothing stored twice, no alert emitted twice.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ingest import JsonlSource, RawProducer
from riskwire.broker import EmbeddedBroker
from riskwire.records import Alert
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.engine import fresh_database
from storage.tables import (
    AlertEventRow,
    AlertRow,
    DocumentRow,
    GroupSentimentRow,
    RiskAggregateRow,
    ScoreRow,
    TickerSentimentRow,
)
from tests.kafka_helpers import read_topic, stream_settings, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 20_000
START = datetime(2026, 9, 1, tzinfo=UTC)
SPAN = timedelta(days=5)
COMPANIES = Path(__file__).resolve().parents[2] / "ingest" / "reference" / "companies.csv"
GOOD = ["beats estimates", "raises guidance", "record profit", "strong demand", "raises dividend"]
BAD = ["cuts outlook", "misses estimates", "downgrade", "plunge", "cuts guidance"]
PLAIN = ["reports quarterly results", "holds annual meeting", "names new director", "files 10-Q"]
RULES = """
rules:
  - {name: surge, type: negative_surge, window_minutes: 120, hop_minutes: 30, min_documents: 4}
  - {name: shock, type: sentiment_z, window_minutes: 60, sentiment_z: -2.5, min_documents: 3}
  - {name: spike, type: volume_spike, window_minutes: 60, volume_z: 4, min_documents: 6}
  - {name: drift, type: drift, window_minutes: 60, consecutive: 3, mean_score: -0.2}
  - {name: sector_surge, type: negative_surge, group: sector, min_documents: 8, negative_share: 0.5}
  - {name: market_shock, type: sentiment_z, group: market, window_minutes: 60, sentiment_z: -3}
"""


def companies() -> list[tuple[str, str]]:
    """Six names from each of four sectors of the shipped reference table."""
    by_sector: dict[str, list[tuple[str, str]]] = {}
    with COMPANIES.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["country"] == "US" and row["ambiguous"] == "0":
                by_sector.setdefault(row["sector"], []).append((row["ticker"], row["name"]))
    sectors = ["Energy", "Financials", "Health Care", "Information Technology"]
    return [c for s in sectors for c in by_sector[s][:6]]


def write_corpus(path: Path, n: int = N) -> int:
    """``n`` news items in event-time order: calm mixed news, three single-name negative bursts,
    an Energy sell-off and a volume spike. Every text carries its own number, so none are copies."""
    rng = random.Random(20261129)
    names = companies()
    step = SPAN / n
    bursts = {  # ticker -> (start, end) of a burst of bad news
        names[0][0]: (START + timedelta(days=3, hours=2), START + timedelta(days=3, hours=5)),
        names[7][0]: (START + timedelta(days=3, hours=20), START + timedelta(days=4)),
        names[15][0]: (START + timedelta(days=4, hours=6), START + timedelta(days=4, hours=9)),
    }
    energy = {t for t, _ in names[:6]}
    selloff = (START + timedelta(days=4, hours=14), START + timedelta(days=4, hours=18))
    spike = names[20][0], START + timedelta(days=3, hours=12)
    items = []
    for i in range(n):
        t = START + i * step
        ticker, name = rng.choice(names)
        if i % 997 == 0:  # the volume spike: a crowd of items about one name
            ticker, name = spike[0], dict(names)[spike[0]]
            t = spike[1] + timedelta(seconds=i % 3000)
        burst = bursts.get(ticker)
        in_burst = burst is not None and burst[0] <= t < burst[1]
        in_selloff = ticker in energy and selloff[0] <= t < selloff[1]
        if in_burst or in_selloff or rng.random() < 0.15:
            phrase = rng.choice(BAD)
        else:
            phrase = rng.choice(GOOD if rng.random() < 0.4 else PLAIN)
        item = {
            "kind": "news", "source": f"wire-{i % 5}", "id": f"c{i:05d}", "tickers": [ticker],
            "title": f"{name} {phrase}; order book at {1000 + i} units",
            "published_at": t.isoformat(),
        }  # fmt: skip
        items.append(item)
    items.sort(key=lambda item: (item["published_at"], item["id"]))  # as a feed publishes them
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return n


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "corpus.jsonl"
    write_corpus(path)
    return path


def settings_for(broker: EmbeddedBroker, url: str, data_dir: Path, **overrides: Any) -> Settings:
    rules = data_dir / "rules.yaml"
    rules.write_text(RULES)
    return stream_settings(
        "crash", broker.bootstrap, url, data_dir,
        **{"ensemble_members": "finlex:1", "rules_file": rules, "baseline_days": 2,
           "score_batch_size": 256, "score_batch_wait_s": 0.3, "reorder_idle_s": 3, **overrides},
    )  # fmt: skip


def publish(settings: Settings, corpus: Path, n: int = N) -> None:
    with RawProducer(settings.kafka_bootstrap or "", settings.topics) as producer:
        assert producer.publish(JsonlSource(corpus).read()).raw == n


def drain(settings: Settings, timeout: float = 400) -> None:
    t = settings.topics
    wait_drained(settings.kafka_bootstrap or "", settings.consumer_group,
                 [t.raw_news, t.docs, t.scored, t.groups], timeout=timeout)  # fmt: skip


def rows_stored(url: str) -> Callable[[], int]:
    sessions = session_factory(make_engine(url))

    def count() -> int:
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(TickerSentimentRow)) or 0)

    return count


def wait_until(condition: Callable[[], bool], *processes: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the workers made no progress"
        assert all(p.poll() is None for p in processes), "a worker died on its own"
        time.sleep(0.2)


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the stream stored, in a comparable form."""
    engine = make_engine(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with session_factory(engine)() as session:
        out["documents"] = sorted(session.execute(select(DocumentRow.id)).tuples())
        out["scores"] = sorted(
            session.execute(select(ScoreRow.document_id, ScoreRow.label, ScoreRow.score)).tuples()
        )
        for name, table in (("ticker_sentiment", TickerSentimentRow),
                            ("group_sentiment", GroupSentimentRow)):  # fmt: skip
            out[name] = sorted(
                session.execute(
                    select(table.ticker, table.document_id, table.published_at, table.score,
                           table.late, table.window_documents, table.window_mean_score,
                           table.window_negative_share)
                ).tuples()
            )  # fmt: skip
        a = RiskAggregateRow
        out["risk_aggregates"] = sorted(
            session.execute(
                select(a.ticker, a.window_minutes, a.window_start, a.documents, a.mean_score,
                       a.negative_share, a.dispersion, a.sentiment_z, a.volume_z)
            ).tuples(),
            key=repr,
        )  # fmt: skip
        out["alerts"] = sorted(
            (r.id, r.rule, r.ticker, r.severity, r.state, r.window_start, r.window_end,
             json.dumps(r.measured, sort_keys=True), tuple(r.evidence), r.explanation)
            for r in session.scalars(select(AlertRow))
        )  # fmt: skip
        out["alert_events"] = sorted(session.execute(select(AlertEventRow.id)).tuples())
    engine.dispose()
    return out


def alerts_on_topic(settings: Settings) -> list[tuple[str, str]]:
    messages = read_topic(settings.kafka_bootstrap or "", settings.topics.alerts)
    return [(a.id, a.state) for a in (Alert.from_json(m.value) for m in messages)]


def assert_same(got: dict[str, list[Any]], want: dict[str, list[Any]]) -> None:
    for table, rows in want.items():
        missing = sorted(set(rows) - set(got[table]), key=repr)
        extra = sorted(set(got[table]) - set(rows), key=repr)
        same = got[table] == rows  # a compact message: the full lists are thousands of rows
        assert same, (
            f"{table}: {len(got[table])} rows, {len(rows)} wanted; {len(missing)} missing, "
            f"{len(extra)} unexpected; missing {missing[:5]}, unexpected {extra[:5]}"
        )


def start(
    broker: EmbeddedBroker, url: str, corpus: Path, data_dir: Path
) -> tuple[Settings, Callable[[], int], Any]:
    """A migrated database, a first worker, and the corpus published: settings, a count of stored
    rolling rows, and the worker."""
    upgrade(url)
    settings = settings_for(broker, url, data_dir)
    worker = spawn_worker(settings, data_dir / "worker-1.log")
    publish(settings, corpus)
    return settings, rows_stored(url), worker


def kill(worker: Any) -> None:
    """SIGKILL: no shutdown, no last commit."""
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)


def warnings_in(logs: Path) -> str:
    """The workers' warnings (out-of-order scores say what the watermarks said), for a failure."""
    lines = [
        f"{path.name}: {line}"
        for path in sorted(logs.glob("worker*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "WARNING" in line or "ERROR" in line
    ]
    return "\n".join(lines[:30])


def assert_as_uninterrupted(
    settings: Settings, url: str, want: dict[str, list[Any]], logs: Path
) -> None:
    """Everything stored is as in the uninterrupted run, and no alert went out twice."""
    try:
        assert_same(snapshot(url), want)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworkers' warnings:\n{warnings_in(logs)}") from None
    on_topic = alerts_on_topic(settings)
    assert max(Counter(on_topic).values()) == 1, "an alert was emitted twice"
    events = {(a[0], "firing") for a in want["alerts"]}
    events |= {(a[0], "resolved") for a in want["alerts"] if a[4] == "resolved"}
    assert set(on_topic) <= events


@pytest.fixture(scope="module")
def uninterrupted(
    broker: EmbeddedBroker, postgres_admin_url: str, corpus: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, list[Any]]]:  # fmt: skip
    data_dir = tmp_path_factory.mktemp("uninterrupted")
    with fresh_database(postgres_admin_url) as url:
        upgrade(url)
        settings = settings_for(broker, url, data_dir)
        worker = spawn_worker(settings, data_dir / "worker.log")
        try:
            publish(settings, corpus)
            drain(settings)
        finally:
            assert stop_worker(worker) == 0
        result = snapshot(url)
        on_topic = alerts_on_topic(settings)
        yield result
    assert len(result["documents"]) == N and len(result["ticker_sentiment"]) == N
    assert sorted(Counter(on_topic).values())[-1:] == [1]


def test_the_uninterrupted_run_finds_what_the_corpus_holds(
    uninterrupted: dict[str, list[Any]],
) -> None:
    fired = {(rule, ticker) for _, rule, ticker, _, state, *_ in uninterrupted["alerts"]}
    rules = {rule for rule, _ in fired}
    assert {"surge", "shock", "spike", "sector_surge"} <= rules, fired
    assert ("sector_surge", "sector:Energy") in fired
    groups = {t for t, *_ in uninterrupted["group_sentiment"]}
    assert "market" in groups and "sector:Energy" in groups
    windows = {m for _, m, *_ in uninterrupted["risk_aggregates"]}
    assert windows == {15, 60, 1440}
    assert any(z is not None for *_, z, _ in uninterrupted["risk_aggregates"])


def test_a_worker_killed_mid_stream_and_restarted_changes_nothing(
    broker: EmbeddedBroker, postgres_url: str, corpus: Path, tmp_path: Path,
    uninterrupted: dict[str, list[Any]],
) -> None:  # fmt: skip
    settings, stored, first = start(broker, postgres_url, corpus, tmp_path)
    wait_until(lambda: stored() >= N * 0.35, first)
    kill(first)
    assert stored() < N, "the kill came too late to test anything"

    second = spawn_worker(settings, tmp_path / "worker-2.log")
    try:
        drain(settings)
    finally:
        assert stop_worker(second) == 0
    assert_as_uninterrupted(settings, postgres_url, uninterrupted, tmp_path)


def test_two_workers_with_rebalances_and_a_kill_change_nothing(
    broker: EmbeddedBroker, postgres_url: str, corpus: Path, tmp_path: Path,
    uninterrupted: dict[str, list[Any]],
) -> None:  # fmt: skip
    settings, stored, first = start(broker, postgres_url, corpus, tmp_path)
    wait_until(lambda: stored() >= N * 0.15, first)
    second = spawn_worker(settings, tmp_path / "worker-2.log")  # joins: partitions move
    try:
        wait_until(lambda: stored() >= N * 0.55, first, second)
        kill(first)  # its partitions move again, to the second
        assert stored() < N, "the kill came too late to test anything"
        drain(settings)
    finally:
        assert stop_worker(second) == 0
    assert_as_uninterrupted(settings, postgres_url, uninterrupted, tmp_path)
    log = (tmp_path / "worker-2.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_workers_joining_and_dying_change_nothing(
    broker: EmbeddedBroker, postgres_url: str, corpus: Path, tmp_path: Path,
    uninterrupted: dict[str, list[Any]],
) -> None:  # fmt: skip
    """Four workers over the run, one of them stopped as a deployment stops it (SIGTERM: it
    leaves cleanly, batches in flight finished or left to be read again) and one SIGKILLed, with
    a rebalance at each step: every partition moves, some twice, while scores are held and
    batches are in flight."""
    settings, stored, first = start(broker, postgres_url, corpus, tmp_path)
    alive = {1: first}
    try:
        steps = ((0.10, "join", 2), (0.25, "join", 3), (0.40, "stop", 2), (0.55, "join", 4),
                 (0.70, "kill", 1))  # fmt: skip
        for share, step, n in steps:
            wait_until(lambda share=share: stored() >= N * share, *alive.values())
            if step == "join":
                alive[n] = spawn_worker(settings, tmp_path / f"worker-{n}.log")
            elif step == "stop":
                assert stop_worker(alive.pop(n)) == 0
                log = (tmp_path / f"worker-{n}.log").read_text(errors="replace")
                assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]
            else:
                kill(alive.pop(n))
        assert stored() < N, "the last kill came too late to test anything"
        drain(settings)
    finally:
        for worker in alive.values():
            assert stop_worker(worker) == 0
    assert_as_uninterrupted(settings, postgres_url, uninterrupted, tmp_path)

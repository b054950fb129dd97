"""``riskwire demo``: the whole pipeline on the embedded default, from a sample feed to a table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ingest import RawProducer
from ingest.base import SourceItem
from ingest.files import JsonlSource
from riskwire.broker import broker_for
from riskwire.exceptions import InvalidRecord, RiskwireError
from riskwire.records import DeadLetter
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.repository import TickerSummary, ticker_summary
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    DocumentTickerRow,
    TickerSentimentRow,
)
from streams.pipeline import normalise

SAMPLE = Path(__file__).resolve().parent / "sample" / "feed.jsonl"


@dataclass
class Expected:
    """What a finished run must show for a given input: the documents and the dead letters."""

    document_ids: set[str] = field(default_factory=set)
    dead_letters: int = 0
    items: int = 0


def expected_outcome(items: Iterable[SourceItem]) -> Expected:
    expected = Expected()
    for item in items:
        expected.items += 1
        if isinstance(item, DeadLetter):
            expected.dead_letters += 1
            continue
        try:
            expected.document_ids.add(normalise(item).id)
        except InvalidRecord:
            expected.dead_letters += 1
    return expected


@dataclass
class Counts:
    documents: int
    dead_letters: int
    mentions: int
    aggregated: int


def measure(sessions: sessionmaker[Session], expected: Expected) -> Counts:
    with sessions() as session:
        ids = list(expected.document_ids)
        docs = session.scalar(
            select(func.count()).select_from(DocumentRow).where(DocumentRow.id.in_(ids))
        )
        mentions = session.scalar(
            select(func.count())
            .select_from(DocumentTickerRow)
            .where(DocumentTickerRow.document_id.in_(ids))
        )
        aggregated = session.scalar(
            select(func.count())
            .select_from(TickerSentimentRow)
            .where(TickerSentimentRow.run_id == "live", TickerSentimentRow.document_id.in_(ids))
        )
        dead = session.scalar(select(func.count()).select_from(DeadLetterRow))
    return Counts(int(docs or 0), int(dead or 0), int(mentions or 0), int(aggregated or 0))


def done(p: Counts, expected: Expected) -> bool:
    return (
        p.documents == len(expected.document_ids)
        and p.dead_letters >= expected.dead_letters
        and p.aggregated == p.mentions
    )


def wait_for(
    sessions: sessionmaker[Session],
    expected: Expected,
    timeout: float,
    console: Console,
    worker_alive: Callable[[], bool],
) -> Counts:
    deadline = time.monotonic() + timeout
    total = len(expected.document_ids) + expected.dead_letters
    with Progress(
        TextColumn("processing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("processing", total=total)
        while True:
            p = measure(sessions, expected)
            bar.update(
                task,
                completed=min(p.documents, p.aggregated)
                + min(p.dead_letters, expected.dead_letters),
            )
            if done(p, expected):
                return p
            if not worker_alive():
                raise RiskwireError("the worker exited early; see its log")
            if time.monotonic() > deadline:
                raise RiskwireError(f"not finished after {timeout:.0f}s: {p}")
            time.sleep(0.5)


def run_demo(settings: Settings, console: Console, sample: Path | None, timeout: float) -> None:
    started = time.monotonic()
    sample = sample or SAMPLE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    url = settings.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    expected = expected_outcome(JsonlSource(sample).read())
    console.print(f"sample: {expected.items} items from {sample}")
    with broker_for(settings.kafka_bootstrap, logs / "broker.log") as bootstrap:
        live = settings.with_bootstrap(bootstrap)
        console.print(f"broker: {bootstrap}   database: {shown}")
        worker = spawn_worker(live, logs / "worker.log")
        try:
            with RawProducer.for_settings(live) as producer:
                counts = producer.publish(JsonlSource(sample).read())
            console.print(
                f"ingested {counts.raw} records ({counts.dead} unreadable lines dead-lettered)"
            )
            progress = wait_for(sessions, expected, timeout, console, lambda: worker.poll() is None)
        finally:
            stop_worker(worker)
    with sessions() as session:
        summary = ticker_summary(session)
        alerts = session.scalars(
            select(AlertRow).where(AlertRow.run_id == "live").order_by(AlertRow.window_start)
        ).all()
    engine.dispose()
    print_report(console, summary, alerts, progress)
    console.print(
        f"\ndata: {shown}\nlogs: {logs.resolve()}\ndone in {time.monotonic() - started:.1f}s"
    )


def print_report(
    console: Console, summary: list[TickerSummary], alerts: Sequence[AlertRow], progress: Counts
) -> None:
    table = Table(title="riskwire: tickers")
    for column in ("ticker", "documents", "mean sentiment", "alerts"):
        table.add_column(column, justify="left" if column == "ticker" else "right")
    for row in sorted(summary, key=lambda r: (-r.alerts, r.mean_score)):
        style = "red" if row.alerts else None
        table.add_row(
            row.ticker, str(row.documents), f"{row.mean_score:+.3f}", str(row.alerts), style=style
        )
    console.print(table)
    console.print(
        f"{progress.documents} documents stored, {progress.dead_letters} dead letters"
        + (" (`riskwire deadletters summary` says why)" if progress.dead_letters else "")
    )
    for alert in alerts:
        console.print(
            f"[bold]{alert.severity.upper()}[/bold] {alert.rule} {alert.ticker} "
            f"({alert.state}) {alert.window_start:%Y-%m-%d %H:%M}–{alert.window_end:%H:%M} UTC: "
            f"{alert.explanation}"
        )

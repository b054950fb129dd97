"""The ``riskwire`` command. The only place that prints; everything else logs."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from riskwire.exceptions import RiskwireError
from riskwire.records import Kind
from riskwire.settings import Settings, load_settings

app = typer.Typer(
    help="Streaming financial sentiment and per-ticker risk warnings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
models_app = typer.Typer(help="Train and evaluate the bundled models.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
console = Console(soft_wrap=True)  # paths and URLs stay whole for copy and paste


def _settings() -> Settings:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return settings


@app.command()
def broker(port: Annotated[int, typer.Option(help="0 picks a free port")] = 0) -> None:
    """Run the embedded Tansu broker until Ctrl-C."""
    from riskwire.broker import EmbeddedBroker

    _settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=port or None) as running:
        console.print(f"broker ready: RISKWIRE_KAFKA_BOOTSTRAP={running.bootstrap}")
        try:
            while not stop.wait(0.5) and running.running:
                pass
        except KeyboardInterrupt:
            pass
    console.print("broker stopped")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations to RISKWIRE_DATABASE_URL (default: SQLite in the data directory)."""
    from storage.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at {revision}: {settings.resolved_database_url}")


@app.command()
def worker() -> None:
    """Run a stream worker against RISKWIRE_KAFKA_BOOTSTRAP until stopped."""
    from riskwire.worker import run_worker

    settings = _settings()
    if settings.kafka_bootstrap is None:
        raise RiskwireError("RISKWIRE_KAFKA_BOOTSTRAP is not set: start 'riskwire broker' first")
    run_worker(settings)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl or .csv")],
    kind: Annotated[Kind, typer.Option(help="kind of the rows without their own")] = Kind.NEWS,
) -> None:
    """Produce a JSONL or CSV file to the raw topics."""
    from ingest import RawProducer, source_for

    settings = _settings()
    if settings.kafka_bootstrap is None:
        raise RiskwireError("RISKWIRE_KAFKA_BOOTSTRAP is not set: start 'riskwire broker' first")
    with RawProducer(settings.kafka_bootstrap, settings.topics) as producer:
        counts = producer.publish(source_for(path, kind).read())
    console.print(f"produced {counts.raw} records, {counts.dead} unreadable lines dead-lettered")


@app.command()
def demo(
    sample: Annotated[
        Path | None, typer.Option(help="a JSONL feed; default: the bundled one")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for processing")] = 170.0,
) -> None:
    """Start broker, database and worker; ingest the sample; wait; print what riskwire found."""
    from riskwire.demo import run_demo

    run_demo(_settings(), console, sample, timeout)


@models_app.command("train")
def models_train(
    data: Annotated[Path | None, typer.Option(help="labelled JSONL (text, label)")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write the head")] = None,
) -> None:
    """Fit the MiniLM embedding head on a labelled set (default: the bundled one)."""
    from models.embedding import DEFAULT_HEAD, SentenceEncoder
    from models.training import DEFAULT_TRAIN_SET, LabelledSet, train_head

    settings = _settings()
    labelled = LabelledSet.read(data or DEFAULT_TRAIN_SET)
    with console.status(f"embedding {len(labelled.texts)} texts and fitting the head"):
        head = train_head(SentenceEncoder(settings.encoder_path, settings.device), labelled)
    head.save(out or DEFAULT_HEAD)
    console.print(
        f"{head.version}: cross-validated accuracy {head.meta['cv_accuracy']:.3f}, "
        f"written to {out or DEFAULT_HEAD}"
    )


@models_app.command("evaluate")
def models_evaluate(
    data: Annotated[Path, typer.Argument(exists=True, help="labelled JSONL (text, label)")],
    limit: Annotated[int, typer.Option(help="at most this many rows (0 = all)")] = 0,
) -> None:
    """Accuracy and macro F1 of each member and the fused ensemble on a labelled set."""
    from riskwire.evaluate import evaluate_file

    evaluate_file(_settings(), console, data, limit)


def main() -> None:
    try:
        app()
    except RiskwireError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None

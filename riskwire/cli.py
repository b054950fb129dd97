"""The ``riskwire`` command. The only place that prints; everything else logs."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from riskwire.exceptions import RiskwireError
from riskwire.records import LABELS as LABELS_
from riskwire.records import Kind
from riskwire.settings import Settings, load_settings

app = typer.Typer(
    help="Streaming financial sentiment and per-ticker risk warnings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
models_app = typer.Typer(help="Train and evaluate the bundled models.", no_args_is_help=True)
replay_app = typer.Typer(
    help="Re-score and re-alert a past period in event time, beside live results."
)
bench_app = typer.Typer(help="Benchmarks that print measured figures.", no_args_is_help=True)
ingest_app = typer.Typer(
    help="Produce sources to the raw topics: files, or polled feeds.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="API keys for the HTTP API (scoped; stored hashed).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(replay_app, name="replay")
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.add_typer(ingest_app, name="ingest")
rules_app = typer.Typer(help="Warning rules: check a rules file, load it into the database.",
                        no_args_is_help=True)  # fmt: skip
silence_app = typer.Typer(
    help="Silences: mute notifications of matching alerts until they expire.", no_args_is_help=True
)
deadletters_app = typer.Typer(
    help="Dead letters: what the stream refused and why; send them back once the cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(rules_app, name="rules")
app.add_typer(silence_app, name="silence")
app.add_typer(deadletters_app, name="deadletters")
labels_app = typer.Typer(
    help="Analysts' labels: say what a document's sentiment is; export them as labelled data and "
    "measure the live models against them.",
    no_args_is_help=True,
)
app.add_typer(labels_app, name="labels")
# options the bench commands share
BenchDatabase = Annotated[
    str | None, typer.Option(help="an empty database; default: SQLite in a temp dir")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]
console = Console(soft_wrap=True)  # paths and URLs stay whole for copy and paste


def _settings() -> Settings:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.companies_file is not None:  # entity linking in backfills and replays
        from streams.pipeline import entities

        entities.configure(settings.companies_file)
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


@contextmanager
def _spinner(text: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    """Progress for long commands: a line that updates in place, none with ``--json``."""
    if quiet:
        yield lambda _: None
        return
    with console.status(text) as status:
        yield status.update


@db_app.command("prune")
def db_prune(
    keep: Annotated[str, typer.Option(help="keep this much event time: 90d, 2160h")],
    keep_alerts: Annotated[
        str | None,
        typer.Option(help="also delete resolved alerts and their sent notifications older "
                     "than this (default: alerts are kept)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="count what would go; delete nothing")] = False,
    as_json: JsonOutput = False,
) -> None:  # fmt: skip
    """Delete documents (with their tickers, votes and scores), rolling sentiment, aggregates and
    dead letters older than --keep, in small transactions; safe to stop and run again. Never
    less than the live risk engine rebuilds groups from (its baseline and twice its horizon)."""
    from storage.retention import prune
    from streams.pipeline.rules import build_risk_engine

    settings = _settings()
    sessions = _sessions(settings)
    engine = build_risk_engine(settings, sessions=sessions)
    floor = engine.baseline + 2 * engine.horizon
    now = datetime.now(UTC)
    cutoffs: list[datetime | None] = []
    for option, value in (("--keep", keep), ("--keep-alerts", keep_alerts)):
        if value is None:
            cutoffs.append(None)
            continue
        try:
            kept = _duration(value)
        except RiskwireError:
            raise RiskwireError(f"{option} {value!r} is not a duration such as 90d") from None
        if kept < floor:
            raise RiskwireError(
                f"{option} {value} is less than the live risk engine reaches back "
                f"({floor.total_seconds() / 86400:.1f} days: a {engine.baseline.days}-day "
                "baseline and twice its horizon; a worker taking a group over rebuilds it "
                "from rolling rows that old)"
            )
        cutoffs.append(now - kept)
    cutoff, alerts_cutoff = cutoffs
    assert cutoff is not None

    verb = "to delete" if dry_run else "deleted"
    with _spinner("pruning", quiet=as_json) as say:
        report = prune(
            sessions, cutoff, alerts_cutoff, dry_run=dry_run,
            progress=lambda table, n: say(f"{table}: {n:,} rows {verb} so far"),
        )  # fmt: skip
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    from rich.table import Table

    table = Table("table", "rows to delete" if dry_run else "rows deleted")
    for name, n in report.rows.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    console.print(f"before {cutoff.isoformat(timespec='seconds')} in event time"
                  + (f"; alerts before {alerts_cutoff.isoformat(timespec='seconds')}"
                     if alerts_cutoff else "; alerts kept"))  # fmt: skip
    if report.kept.get("labelled_documents"):
        console.print(f"kept {report.kept['labelled_documents']:,} older documents that analysts "
                      "labelled (riskwire labels)")  # fmt: skip


@app.command()
def worker() -> None:
    """Run a stream worker against RISKWIRE_KAFKA_BOOTSTRAP until stopped."""
    from riskwire.worker import run_worker

    settings = _settings()
    if settings.kafka_bootstrap is None:
        raise RiskwireError("RISKWIRE_KAFKA_BOOTSTRAP is not set: start 'riskwire broker' first")
    run_worker(settings)


@ingest_app.command("file")
def ingest_file(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".jsonl or .csv")],
    kind: Annotated[Kind, typer.Option(help="kind of the rows without their own")] = Kind.NEWS,
) -> None:
    """Produce a JSONL or CSV file to the raw topics."""
    from ingest import RawProducer, source_for

    settings = _settings()
    with RawProducer.for_settings(settings) as producer:
        counts = producer.publish(source_for(path, kind).read())
    console.print(f"produced {counts.raw} records, {counts.dead} unreadable lines dead-lettered")


@ingest_app.command("health")
def ingest_health() -> None:
    """Each polled feed's health: failing and silent feeds first."""
    from rich.table import Table

    from ingest.feeds import health_worst_first

    sessions = _sessions(_settings())
    with sessions() as session:
        rows = health_worst_first(session)
    table = Table("feed", "status", "last success", "last new item", "errors", "items/min", "error")
    for r in rows:
        style = {"failing": "red", "silent": "yellow"}.get(r.status)
        table.add_row(
            r.source, r.status,
            r.last_success_at.isoformat(timespec="seconds") if r.last_success_at else "-",
            r.last_item_at.isoformat(timespec="seconds") if r.last_item_at else "-",
            str(r.consecutive_errors), f"{r.items_per_minute:.2f}", (r.last_error or "")[:60],
            style=style,
        )  # fmt: skip
    console.print(table)


@ingest_app.command("run")
def ingest_run(
    config: Annotated[
        Path, typer.Option("--config", exists=True, dir_okay=False, help="the feeds YAML file")
    ],
    once: Annotated[bool, typer.Option(help="poll every feed once, then stop")] = False,
) -> None:
    """Poll the configured RSS/Atom feeds and JSON APIs, producing new items to the raw topics and
    recording each feed's health, until Ctrl-C."""
    from ingest import RawProducer
    from ingest.feeds import FeedRunner, load_feeds
    from riskwire.delivery.model import delivery_targets

    settings = _settings()
    if settings.kafka_bootstrap is None:
        raise RiskwireError("RISKWIRE_KAFKA_BOOTSTRAP is not set: start 'riskwire broker' first")
    feeds = load_feeds(config)
    sessions = _sessions(settings)
    with RawProducer.for_settings(settings) as producer:
        runner = FeedRunner(feeds, producer.publish, sessions, targets=delivery_targets(settings))
        console.print(f"polling {len(feeds)} feeds: {', '.join(f.source.name for f in feeds)}")
        try:
            if once:
                produced = runner.poll_due()
                console.print(f"produced {produced} new items")
                for name, health in runner.health.items():
                    console.print(f"  {name}: {runner.status[name]}"
                                  + (f" ({health.last_error})" if health.last_error else ""))  # fmt: skip
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                runner.run(stop)
            except KeyboardInterrupt:
                pass
        finally:
            runner.close()


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


DataOption = Annotated[
    list[Path], typer.Option("--data", exists=True, dir_okay=False, help="labelled JSONL or CSV")
]
SplitOption = Annotated[
    str,
    typer.Option(help="which hash split of --data: train, val, test, or all (the whole file)"),
]


def _labelled(paths: list[Path], split: str) -> Any:
    from models.training import LabelledSet

    data = LabelledSet.read_many(paths)
    return data if split == "all" else data.split(split)


def _register(settings: Settings, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
    from storage.repository import register_model_versions

    with _sessions(settings)() as session, session.begin():
        register_model_versions(session, entries, datetime.now(UTC))


@models_app.command("split")
def models_split(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="folder for NAME.train/val/test.jsonl")],
) -> None:
    """Write the train / val / test splits (70/15/15 by a hash of each text) of labelled sets."""
    from models.training import SPLITS, LabelledSet

    out.mkdir(parents=True, exist_ok=True)
    for path in data:
        labelled = LabelledSet.read(path)
        for name in SPLITS:
            part = labelled.split(name)
            target = out / f"{path.stem}.{name}.jsonl"
            with target.open("w", encoding="utf-8") as handle:
                for text, label in zip(part.texts, part.labels, strict=True):
                    row = {"text": text, "label": LABELS_[int(label)]}
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            console.print(f"{target}: {len(part):,} rows")


@models_app.command("train")
def models_train(
    data: DataOption,
    name: Annotated[str, typer.Option(help="member name, e.g. minilm-fpb")],
    out: Annotated[
        Path | None,
        typer.Option(help="artefact folder (head: a .json file); optional with --folds"),
    ] = None,
    kind: Annotated[
        str, typer.Option(help="head (a head on frozen embeddings) or finetune")
    ] = "head",
    base: Annotated[
        str | None, typer.Option(help="base encoder: local path or hub id; default packaged MiniLM")
    ] = None,
    hidden: Annotated[
        int,
        typer.Option(min=0, help="head: units in one ReLU hidden layer (0: a linear head)"),
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    max_minutes: Annotated[float | None, typer.Option(help="stop fine-tuning after this")] = None,
    patience: Annotated[
        int,
        typer.Option(
            min=1,
            help="fine-tuning: stop after this many evaluations (two an epoch) without "
            "a better validation macro-F1",
        ),
    ] = 2,
    max_length: Annotated[int, typer.Option(min=16)] = 128,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    learning_rate: Annotated[float, typer.Option()] = 5e-5,
    seed: Annotated[int, typer.Option()] = 0,
    precision: Annotated[
        str,
        typer.Option(
            help="fine-tuning arithmetic: auto (bf16 autocast on a CPU that has it), fp32 or bf16"
        ),
    ] = "auto",
    group_by_length: Annotated[
        bool, typer.Option(help="fine-tune on batches of similar length (less padding)")
    ] = True,
    pooling: Annotated[
        str,
        typer.Option(
            help="fine-tuning: classify the mean of the token vectors (mean, as MiniLM was "
            "trained) or BERT's pooler over the first token (cls)"
        ),
    ] = "mean",
    folds: Annotated[
        int | None,
        typer.Option(min=2, help="also train a copy per fold; write out-of-fold answers to --oof"),
    ] = None,
    fold_on: Annotated[
        list[Path] | None,
        typer.Option("--fold-on", help="the --data sets cut into folds (default: all of them)"),
    ] = None,
    oof: Annotated[
        Path | None, typer.Option(help="where --folds writes the out-of-fold probabilities")
    ] = None,
    register: Annotated[bool, typer.Option(help="record the version in the database")] = True,
) -> None:
    """Train a member on the train split of --data, validate on its val split, register it.
    With --folds K, also cross-fit it: K copies, each trained without one fold of the training
    rows and scoring that fold (``models/crossfit.py``), for ``models fuse --oof``."""
    from models.embedding import EmbeddingHeadMember, SentenceEncoder
    from models.finetune import POOLINGS, FinetuneConfig
    from models.training import LabelledSet, evaluate, train_head

    if kind not in ("head", "finetune"):
        raise RiskwireError(f"--kind {kind!r}: choose head or finetune")
    if hidden and kind != "head":
        raise RiskwireError("--hidden is for --kind head")
    if pooling not in POOLINGS:
        raise RiskwireError(f"--pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    if (folds is None) != (oof is None):
        raise RiskwireError("--folds and --oof go together")
    if out is None and folds is None:
        raise RiskwireError("say where the member goes (--out), or cross-fit it (--folds, --oof)")
    settings = _settings()
    sets = [(path, LabelledSet.read(path)) for path in data]
    full = LabelledSet.concat([labelled for _, labelled in sets])
    train, val = full.split("train"), full.split("val")
    console.print(f"{len(train):,} training rows, {len(val):,} validation rows")
    config = FinetuneConfig(
        epochs=epochs, max_minutes=max_minutes, max_length=max_length, batch_size=batch_size,
        learning_rate=learning_rate, seed=seed, precision=precision, patience=patience,
        group_by_length=group_by_length, pooling=pooling,
    )  # fmt: skip
    encoder = (
        SentenceEncoder(base or settings.encoder_path, settings.model_device)
        if kind == "head"
        else None
    )

    def fit(rows: Any, target: Path, digest: str, what: str) -> dict[str, float]:
        """Train on ``rows`` into ``target``; the validation figures."""
        if encoder is None:
            return dict(_finetune(base, rows, val, target, config, what).best_val)
        with console.status(f"{what}: embedding {len(rows):,} texts and fitting the head"):
            head = train_head(encoder, rows, name=name, hidden=hidden)
            scores = evaluate(
                EmbeddingHeadMember(encoder, head).predict_proba(val.texts), val.labels
            )
        head.meta.update(name=name, base=encoder.name, data_sha256=digest,
                         metrics={f"val_{k}": round(float(v), 4) for k, v in scores.items()})  # fmt: skip
        head.save(target)
        return scores

    if out is not None:
        scores = fit(train, out, full.sha256, "fine-tuning" if encoder is None else "training")
        if kind == "head":
            from models.embedding import Head

            head = Head.load(out)
            version, description = head.version, {"kind": "embedding-head", "path": str(out),
                                                  **head.meta}  # fmt: skip
        else:
            from models.hf import HFClassifierMember

            member = HFClassifierMember(str(out), name=name, device=settings.model_device)
            version, description = member.version, member.describe() | {"path": str(out)}
        console.print(
            f"{name} {version}: validation macro-F1 {scores['macro_f1']:.3f}, accuracy "
            f"{scores['accuracy']:.3f}, written to {out}"
        )
        if register:
            _register(settings, [(name, version, description)])
    if folds is not None and oof is not None:
        _cross_fit(settings, sets, fold_on, folds, oof, name, kind, base, max_length, fit)


def _cross_fit(
    settings: Settings, sets: list[tuple[Path, Any]], fold_on: list[Path] | None, folds: int,
    oof: Path, name: str, kind: str, base: str | None, max_length: int, fit: Any,
) -> None:  # fmt: skip
    """The copies of ``models train --folds``, each scored as the ensemble scores its member."""
    import tempfile

    import numpy as np

    from models.crossfit import cross_fit
    from models.factory import MemberBuilder
    from models.training import LabelledSet, evaluate

    parts = {p.resolve(): labelled.split("train") for p, labelled in sets}
    chosen = [p.resolve() for p in fold_on] if fold_on else list(parts)
    if not set(chosen) <= set(parts):
        raise RiskwireError("--fold-on names a set that is not one of the --data sets")
    folded = LabelledSet.concat([parts[p] for p in chosen])
    rest = [part for p, part in parts.items() if p not in chosen]
    fixed = LabelledSet.concat(rest) if rest else LabelledSet([], np.zeros(0, np.int64), "")
    builder = MemberBuilder(settings)

    def score(fold: Any) -> Any:
        what = f"fold {fold.number + 1}/{folds}"
        with tempfile.TemporaryDirectory(prefix="riskwire-fold-") as scratch:
            target = Path(scratch) / ("head.json" if kind == "head" else "model")
            scores = fit(fold.train, target, fold.train.sha256, what)
            spec = (
                {"member": "head", "head": str(target), "name": name}
                | ({"encoder": base} if base else {})
                if kind == "head"
                else {"member": "hf", "model": str(target), "name": name, "max_length": max_length}
            )
            with console.status(f"{what}: scoring the {len(fold.held):,} rows held out"):
                proba = builder.build(spec).predict_proba(fold.held.texts)
        held = evaluate(proba, fold.held.labels)["macro_f1"]
        console.print(
            f"{name} {what}: trained on {len(fold.train):,} rows (validation macro-F1 "
            f"{scores['macro_f1']:.3f}); macro-F1 {held:.3f} on the {len(fold.held):,} held out"
        )
        return proba

    result = cross_fit(name, fixed, folded, folds, score)
    result.save(oof)
    console.print(f"{name}: out-of-fold probabilities for {len(result.keys):,} rows in {oof}")


def _finetune(base: str | None, train: Any, val: Any, out: Path, config: Any, what: str) -> Any:
    """``models.finetune.finetune`` with a progress bar and each evaluation's figures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from models.embedding import default_encoder_path
    from models.finetune import finetune

    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*Progress.get_default_columns()[:1], *columns, console=console) as bar:
        task = bar.add_task(what, total=None)

        def progress(step: int, total: int, figures: dict[str, float]) -> None:
            bar.update(task, completed=step, total=total)
            if figures:
                bar.console.print(
                    f"step {step}: train loss {figures['train_loss']:.3f}, val macro-F1 "
                    f"{figures['val_macro_f1']:.3f}, val accuracy {figures['val_accuracy']:.3f}"
                )

        return finetune(base or default_encoder_path(), train, val, out, config, progress)


@models_app.command("fuse")
def models_fuse(
    members: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="ensemble file naming the members")
    ],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="the fitted ensemble file to write")],
    fusion: Annotated[
        str, typer.Option(help="majority, soft, stacking or dawid-skene")
    ] = "stacking",
    split: SplitOption = "val",
    name: Annotated[str | None, typer.Option(help="ensemble name; default: the file's")] = None,
    oof: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="folder of out-of-fold files (models train --folds): members' answers on the "
            "rows they trained on",
        ),
    ] = None,
    register: Annotated[bool, typer.Option(help="record the version in the database")] = True,
    prune: Annotated[
        bool,
        typer.Option(
            help="leave out members the fusion can do without: units of cost (heads over one "
            "encoder are one), dropped while the fusion's cross-validated log-loss on the fitting "
            "rows stays within --prune-se standard errors of the whole ensemble's"
        ),
    ] = False,
    prune_se: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="standard errors (of the paired per-row difference) of log-loss that "
            "pruning may give up",
        ),
    ] = 1.0,
) -> None:
    """Fit an ensemble's fusion (temperatures and weights, stacker, Dawid-Skene) on a split of
    --data (default val), and report it on the test split. With --oof, a member's answers on rows
    it trained on are its out-of-fold ones, so its training rows can be fitting rows too. With
    --prune, members that cross-validation says add nothing are left out of the written file."""
    from models.ensemble import Ensemble
    from models.factory import MemberBuilder, read_spec, relocate, spec_of
    from models.fusion import get_fusion
    from models.prune import prune as prune_members
    from models.prune import score_units
    from riskwire.evaluate import evaluate_ensemble, pruning_table, table

    settings = _settings()
    spec = read_spec(members)
    builder = MemberBuilder(settings, members.parent)
    built = [builder.build(m) for m in spec["members"]]
    ensemble = Ensemble(
        built, [float(m.get("weight", 1.0)) for m in spec["members"]], fusion=get_fusion(fusion),
        name=name or str(spec.get("name", "ensemble")),
    )  # fmt: skip
    labelled = _labelled(data, split)
    with console.status(f"scoring {len(labelled):,} texts with {len(built)} members"):
        probs, units = score_units(built, labelled.texts)
    cross_fitted: dict[str, int] = {}
    if oof is not None:
        from models.crossfit import OutOfFold, apply_out_of_fold

        files = [OutOfFold.load(p) for p in sorted(oof.glob("*.npz"))]
        cross_fitted = apply_out_of_fold(probs, [m.name for m in built], labelled.texts,
                                         {f.member: f for f in files})  # fmt: skip
        for member, rows in cross_fitted.items():
            console.print(f"{member}: out-of-fold answers on {rows:,} of the fitting rows")
    member_specs = spec["members"]
    pruning = None
    if prune:
        with console.status(f"pruning: cross-validating {fusion} without each member in turn"):
            pruning = prune_members(probs, labelled.labels, fusion, ensemble.weights, units,
                                    standard_errors=prune_se)  # fmt: skip
        console.print(pruning_table(pruning, units))
        kept = pruning.kept
        ensemble = Ensemble(
            [built[i] for i in kept], [ensemble.weights[i] for i in kept],
            fusion=get_fusion(fusion), name=ensemble.name,
        )  # fmt: skip
        probs, member_specs = probs[kept], [member_specs[i] for i in kept]
    with console.status(f"fitting {fusion} on {len(labelled):,} rows"):
        ensemble.fit_fusion(labelled.texts, labelled.labels, probs)
    # figures on held-out rows: the test split when fitted on val, else the rows it was fitted on
    held = "test" if split == "val" else split
    check = _labelled(data, held)
    title = f"{held} split" if held != "all" else "the rows it was fitted on (not held out)"
    with console.status(f"evaluating on {len(check):,} rows"):
        evaluation = evaluate_ensemble(ensemble, check, title)
    console.print(table(evaluation))
    # relative paths in the written file are rewritten for its own folder
    written = spec_of(
        ensemble, relocate(member_specs, members.parent, out.parent),
        fitted_on={"data_sha256": labelled.sha256, "rows": len(labelled)}
        | ({"out_of_fold": cross_fitted} if cross_fitted else {})
        | ({"pruned": pruning.summary()} if pruning is not None else {}),
        metrics={"split": held, "rows": len(check), "fused": evaluation.fused,
                 "members": evaluation.members},
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(written, indent=1) + "\n", encoding="utf-8")
    console.print(f"{ensemble.version} written to {out}")
    if register:
        entries = ensemble.registry_entries()
        entries[0] = (entries[0][0], entries[0][1], entries[0][2] | {
            "path": str(out), "data_sha256": labelled.sha256, "metrics": evaluation.fused})  # fmt: skip
        _register(settings, entries)


@models_app.command("promote")
def models_promote(
    ensemble_file: Annotated[
        str,
        typer.Argument(
            help="an ensemble file, or a version kept in DATA_DIR/models/refits (a refit, or a "
            "live file a refit replaced: to go back to it)"
        ),
    ],
    ensemble: Annotated[
        str | None,
        typer.Option(
            help="where it goes live (routing or ensemble file, or a name); default: "
            "the configured one"
        ),
    ] = None,
) -> None:
    """Put an ensemble file live in place of the configured ensemble of the same name (rolling a
    refit back, or forward); the file it replaces is kept by version. Running workers load it
    within RISKWIRE_MODEL_RELOAD_S."""
    from riskwire.refit import promote, refits_dir

    settings = _settings()
    file = Path(ensemble_file)
    if not file.is_file():
        file = refits_dir(settings) / f"{ensemble_file}.json"
        if not file.is_file():
            raise RiskwireError(f"no ensemble file {ensemble_file} and no version of that name "
                                f"in {refits_dir(settings)}")  # fmt: skip
    target, kept = promote(settings, file, ensemble or settings.ensemble)
    console.print(f"{file} is live as {target.name} in {target.promote_to}; the file it replaced "
                  f"is kept as {kept}; running workers load it within RISKWIRE_MODEL_RELOAD_S",
                  highlight=False)  # fmt: skip


@models_app.command("eval")
def models_eval(
    data: DataOption,
    ensemble: Annotated[
        str | None,
        typer.Option(help="ensemble or routing file, or a name; default: the configured one"),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="document kind of each --data file, in order, for a routing file"),
    ] = None,
    split: SplitOption = "all",
    limit: Annotated[int, typer.Option(help="at most this many rows (0 = all)")] = 0,
    report: Annotated[
        Path | None, typer.Option(help="report folder; default: DATA_DIR/reports/eval-TIME")
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Accuracy, macro/weighted F1, ECE and docs/s of each member and the fused ensemble; a
    routing file sends each file's rows to the ensemble for its --kind."""
    from models.factory import ensemble_path, is_routing, load_ensemble
    from models.routing import load_router
    from riskwire.evaluate import evaluate_ensemble, evaluate_router, table, write_report

    settings = _settings()
    out = Console(stderr=True) if as_json else console
    path = ensemble_path(ensemble or settings.ensemble, settings)
    kinds = kind or ["news"] * len(data)
    if len(kinds) != len(data):
        raise RiskwireError(f"{len(kinds)} --kind for {len(data)} --data files")
    parts = [_labelled([p], split) for p in data]
    labelled = type(parts[0]).concat(parts)
    row_kinds = [k for k, part in zip(kinds, parts, strict=True) for _ in range(len(part))]
    if limit:
        labelled = type(labelled)(labelled.texts[:limit], labelled.labels[:limit], labelled.sha256)
        row_kinds = row_kinds[:limit]
    names = "+".join(p.stem for p in data) + ("" if split == "all" else f" ({split} split)")
    if is_routing(path):
        router = load_router(path, settings)
        evaluation = evaluate_router(router, labelled, row_kinds, names, out)
    else:
        evaluation = evaluate_ensemble(load_ensemble(str(path), settings), labelled, names, out)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = report or settings.data_dir / "reports" / f"eval-{stamp}"
    png = write_report(evaluation, folder)
    if as_json:
        typer.echo(json.dumps(evaluation.as_json() | {"report": str(png)}))
        return
    out.print(table(evaluation))
    out.print(f"report: {png}")


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option(help="only versions of this name")] = None,
    as_json: JsonOutput = False,
) -> None:
    """The model registry: every member, ensemble and router version trained or loaded here."""
    from rich.table import Table
    from sqlalchemy import select

    from storage.tables import ModelVersionRow

    with _sessions(_settings())() as session:
        query = select(ModelVersionRow).order_by(ModelVersionRow.registered_at.desc())
        if name:
            query = query.where(ModelVersionRow.name == name)
        rows = list(session.scalars(query))
    if as_json:
        print(json.dumps([{"name": r.name, "version": r.version, "kind": r.kind,
                           "registered_at": r.registered_at.isoformat(),
                           "description": r.description} for r in rows]))  # fmt: skip
        return
    listing = Table("name", "version", "kind", "registered", "data", "metrics")
    for r in rows:
        metrics = r.description.get("metrics") or {}
        shown = {k.removeprefix("val_"): v for k, v in metrics.items()
                 if k.removeprefix("val_") in ("macro_f1", "accuracy", "ece")}  # fmt: skip
        listing.add_row(
            r.name, r.version, r.kind, f"{r.registered_at:%Y-%m-%d %H:%M}",
            str(r.description.get("data_sha256") or "")[:12],
            ", ".join(f"{k} {v:.3f}" for k, v in shown.items() if isinstance(v, int | float)),
        )  # fmt: skip
    console.print(listing)


@models_app.command("evaluate", hidden=True)
def models_evaluate(
    data: Annotated[Path, typer.Argument(exists=True, help="labelled JSONL (text, label)")],
    limit: Annotated[int, typer.Option(help="at most this many rows (0 = all)")] = 0,
) -> None:
    """The old name of `models eval`."""
    models_eval([data], limit=limit)


def _when(value: str | None, option: str) -> datetime | None:
    """ISO-8601 time; one without an offset is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RiskwireError(f"{option} {value!r} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tickers(value: str | None) -> tuple[str, ...]:
    return tuple(t.strip().upper() for t in (value or "").split(",") if t.strip())


FromOption = Annotated[
    str | None, typer.Option("--from", help="start of the period (ISO-8601; no offset = UTC)")
]
ToOption = Annotated[str | None, typer.Option("--to", help="end of the period, exclusive")]
TickersOption = Annotated[str | None, typer.Option(help="comma-separated tickers; default: all")]
VersionOption = Annotated[
    str | None,
    typer.Option(help="ensemble version; default: the one the configuration builds now"),
]
RulesOption = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="YAML warning rules")
]


@replay_app.callback(invoke_without_command=True)
def replay(
    ctx: typer.Context,
    start: FromOption = None,
    end: ToOption = None,
    tickers: TickersOption = None,
    model_version: VersionOption = None,
    rules: RulesOption = None,
    source: Annotated[str, typer.Option(help="'db' or a JSONL archive of raw items")] = "db",
    baseline: Annotated[str, typer.Option(help="run to compare against")] = "live",
    rescore: Annotated[bool, typer.Option(help="score again even where cached")] = False,
) -> None:
    """Replay a period: `riskwire replay --from T1 --to T2`; subcommands manage jobs."""
    if ctx.invoked_subcommand is not None:
        return
    from riskwire.replay import ReplaySpec
    from streams.pipeline.rules import load_rules

    spec = ReplaySpec(
        start=_when(start, "--from"), end=_when(end, "--to"), tickers=_tickers(tickers),
        model_version=model_version, rules=load_rules(rules) if rules else None,
        source=source, baseline=baseline or None, rescore=rescore,
    )  # fmt: skip
    _run_job(_settings(), spec)


def _run_job(settings: Settings, spec: Any, job_id: str | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from riskwire.replay import ReplayRunner, create_job, mark_interrupted
    from riskwire.replay_report import render_report

    sessions = _sessions(settings)
    resume = job_id is not None
    job_id = job_id or create_job(sessions, settings, spec)
    console.print(f"job {job_id}")
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*Progress.get_default_columns()[:1], *columns, console=console) as bar:
        task = bar.add_task("replaying", total=None)
        try:
            status = ReplayRunner(settings, sessions).run(
                job_id, lambda done, total: bar.update(task, completed=done, total=total), resume
            )
        except KeyboardInterrupt:
            mark_interrupted(sessions, job_id)
            console.print(f"interrupted; continue with: riskwire replay resume {job_id}")
            raise SystemExit(130) from None
    job = _load_job(sessions, job_id)
    if status == "done" and job.report:
        render_report(job.report, console)
    elif status == "failed":
        raise RiskwireError(f"job {job_id} failed: {job.error}")
    console.print(f"job {job_id}: {status}")


def _load_job(sessions: Any, job_id: str) -> Any:
    from riskwire.replay import _job

    with sessions() as session:
        job = _job(session, job_id)
        session.expunge(job)
        return job


def _sessions(settings: Settings) -> Any:
    from storage import make_engine, session_factory, upgrade

    upgrade(settings.resolved_database_url)
    return session_factory(make_engine(settings.resolved_database_url))


@replay_app.command("status")
def replay_status(
    job_id: Annotated[str | None, typer.Argument(help="one job; default: the latest 20")] = None,
) -> None:
    """Jobs with their progress, estimated time left and results."""
    from rich.table import Table
    from sqlalchemy import select

    from riskwire.replay import describe_job
    from storage.tables import ReplayRunRow

    sessions = _sessions(_settings())
    with sessions() as session:
        if job_id:
            jobs = [session.get(ReplayRunRow, job_id)]
            if jobs[0] is None:
                raise RiskwireError(f"no replay job {job_id!r}")
        else:
            query = select(ReplayRunRow).order_by(ReplayRunRow.created_at.desc()).limit(20)
            jobs = list(session.scalars(query))
        table = Table(title="replay jobs")
        table.add_column("job", no_wrap=True, min_width=21)  # ids stay whole, even in a pipe
        for column in ("kind", "status", "progress", "eta"):
            table.add_column(column, no_wrap=True)
        for column in ("period", "model", "alerts"):
            table.add_column(column, overflow="fold")
        for job in jobs:
            info = describe_job(job)  # type: ignore[arg-type]
            period = " → ".join((t or "…")[:16] for t in info["period"])
            eta = f"{info['eta_s']:.0f}s" if info["eta_s"] is not None else ""
            table.add_row(
                info["id"], info["kind"], info["status"],
                f"{info['processed']}/{info['total']}", eta, period,
                info["model_version"] or "", str(info["alerts"]),
            )  # fmt: skip
            if info["error"]:
                table.add_row("", "", "error", info["error"], "", "", "", "")
    console.print(table)


@replay_app.command("cancel")
def replay_cancel(job_id: str) -> None:
    """Stop a job after its current page (it can be resumed later)."""
    from riskwire.replay import request_cancel

    status = request_cancel(_sessions(_settings()), job_id)
    console.print(f"job {job_id}: {status}")


@replay_app.command("resume")
def replay_resume(
    job_id: str,
    force: Annotated[
        bool, typer.Option(help="resume a job marked running whose process has died")
    ] = False,
) -> None:
    """Continue an interrupted, cancelled or failed job from its last checkpoint."""
    from riskwire.replay import seems_alive

    settings = _settings()
    job = _load_job(_sessions(settings), job_id)
    if job.status == "running" and seems_alive(job) and not force:
        raise RiskwireError(
            f"job {job_id} is running (progress {seems_alive(job):.0f}s ago); if its process has "
            f"died, resume it with --force"
        )
    _run_job(settings, None, job_id)


@replay_app.command("report")
def replay_report(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="the stored report as JSON")] = False,
) -> None:
    """Show a finished job's report: alerts against the baseline, score agreement, the plot."""
    job = _load_job(_sessions(_settings()), job_id)
    if not job.report:
        raise RiskwireError(f"job {job_id} has no report yet (status {job.status})")
    if as_json:
        print(json.dumps(job.report, indent=2))
        return
    from riskwire.replay_report import render_report

    render_report(job.report, console)


@replay_app.command("compare")
def replay_compare(
    run: Annotated[str, typer.Argument(help="a run id (a replay job id, or live)")],
    baseline: Annotated[str, typer.Argument(help="the run to compare it against")],
    start: FromOption = None,
    end: ToOption = None,
    tickers: TickersOption = None,
) -> None:
    """Compare two runs (e.g. two model versions replayed over one period): alerts and labels."""
    from riskwire.replay_report import Scope, build_report, plot_report, render_report

    settings = _settings()
    sessions = _sessions(settings)
    scope = Scope(_when(start, "--from"), _when(end, "--to"), _tickers(tickers))
    with sessions() as session:
        report = build_report(session, run, baseline, scope)
    out = settings.data_dir / "replays" / f"compare-{run}-{baseline}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot_report(report, out))
    render_report(report, console)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
) -> None:
    """Serve the HTTP API (replay jobs; OpenAPI docs at /docs) until stopped."""
    import uvicorn

    from riskwire.api import create_api
    from storage.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url)
    # server-sent event streams never end by themselves: give them 5 s to close on shutdown
    uvicorn.run(
        create_api(settings), host=host, port=port, log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )  # fmt: skip


@app.command()
def backfill(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL of raw items")],
    start: FromOption = None,
    end: ToOption = None,
    tickers: TickersOption = None,
    model_version: VersionOption = None,
    rules: RulesOption = None,
) -> None:
    """Import an archive of historical documents and compute scores, aggregates and alerts
    for it as live history (rows that already exist are left as they are)."""
    from riskwire.replay import ReplaySpec
    from streams.pipeline.rules import load_rules

    spec = ReplaySpec(
        start=_when(start, "--from"), end=_when(end, "--to"), tickers=_tickers(tickers),
        model_version=model_version, rules=load_rules(rules) if rules else None,
        source=str(path), baseline=None, kind="backfill",
    )  # fmt: skip
    _run_job(_settings(), spec)


@bench_app.command("replay")
def bench_replay(
    documents: Annotated[int, typer.Option(help="stored documents to replay")] = 50_000,
    rescore_documents: Annotated[int, typer.Option(help="documents to re-score (0 = skip)")] = 1000,
    database_url: BenchDatabase = None,
    as_json: JsonOutput = False,
) -> None:
    """Replay docs/s with cached scores and with re-scoring, against the ensemble alone."""
    from bench.replay import run

    _settings()
    say = (lambda _: None) if as_json else console.print
    result = run(documents, rescore_documents, database_url, say)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"cached replay: {result['cached_docs_per_s']:,.0f} docs/s "
        f"({result['documents']:,} documents in {result['cached_seconds']:.1f}s, {result['database']}); "
        f"{result['cached_pages_docs_per_s']:,.0f} docs/s before the report "
        f"({result['report_seconds']:.1f}s); the risk engine alone: "
        f"{result['engine_docs_per_s']:,.0f} docs/s, with the live stream's lateness "
        f"{result['engine_live_lateness_docs_per_s']:,.0f} docs/s"
    )
    if "rescored_docs_per_s" in result:
        console.print(
            f"re-scoring replay: {result['rescored_docs_per_s']:,.0f} docs/s; the ensemble alone: "
            f"{result['ensemble_docs_per_s']:,.0f} docs/s; replay runs at "
            f"{result['rescored_vs_ensemble']:.0%} of the ensemble's speed"
        )


@bench_app.command("prune")
def bench_prune(
    documents: Annotated[int, typer.Option(help="stored documents, over ten days")] = 50_000,
    database_url: BenchDatabase = None,
    as_json: JsonOutput = False,
) -> None:
    """Retention: rows/s that `riskwire db prune` deletes (half of a replayed period)."""
    from bench.retention import run

    _settings()
    say = (lambda _: None) if as_json else console.print
    result = run(documents, database_url, say)
    if as_json:
        print(json.dumps(result))
        return
    rows = ", ".join(f"{t} {n:,}" for t, n in result["rows_deleted"].items() if n)
    console.print(
        f"pruned {result['rows_deleted_total']:,} rows in {result['prune_seconds']:.1f}s "
        f"({result['rows_per_s']:,.0f} rows/s, {result['documents_per_s']:,.0f} documents/s with "
        f"everything hanging off them; {result['database']}): {rows}; the dry run took "
        f"{result['dry_run_seconds']:.1f}s"
    )


@bench_app.command("engine")
def bench_engine(
    documents: Annotated[
        int, typer.Option(help="synthetic documents, in event-time order")
    ] = 200_000,
    days: Annotated[int, typer.Option(help="event-time span of the documents")] = 8,
    drain_every: Annotated[
        int, typer.Option(help="documents between drains of the aggregates")
    ] = 1000,
    as_json: JsonOutput = False,
) -> None:
    """The risk engine's cost per document as its windows fill, against no lateness."""
    from bench.engine import run

    _settings()
    result = run(documents, days, drain_every)
    if as_json:
        print(json.dumps(result))
        return

    def quarters(figures: list[float]) -> str:
        return " / ".join(f"{x:.1f}" for x in figures)

    console.print(
        f"risk engine, {result['documents']:,} documents over {result['days']} days, aggregates "
        f"drained every {result['drain_every']:,}, µs a "
        f"document per quarter: live lateness ({result['lateness_minutes']} min; up to "
        f"{result['live_most_events_held']:,} events in a group) {quarters(result['live_us_per_doc'])}; "
        f"no lateness ({result['baseline_most_events_held']:,} events) "
        f"{quarters(result['baseline_us_per_doc'])}; growth first to last quarter "
        f"{result['live_growth']:.2f}x and {result['baseline_growth']:.2f}x; the live engine's last "
        f"quarter {result['last_quarter_vs_baseline']:.2f}x the baseline's"
    )


@bench_app.command("pipeline")
def bench_pipeline(
    documents: Annotated[int, typer.Option(help="items published at once, for throughput")] = 3000,
    rate: Annotated[float, typer.Option(help="items per second in the latency phase")] = 40.0,
    seconds: Annotated[float, typer.Option(help="how long the latency phase runs")] = 20.0,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="a PostgreSQL server (any database there): each run gets a new "
            "database on it, dropped afterwards; default: SQLite in a temp dir"
        ),
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """End to end through broker, worker and database: docs/s and publish-to-stored and
    publish-to-alert latency, with a null model and with the default ensemble, against the
    ensemble alone."""
    from bench.endtoend import run

    _settings()
    say = (lambda _: None) if as_json else console.print
    result = run(documents, rate, seconds, database_url, say)
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table("model", "docs/s", "p50 stored", "p99 stored", "alerts", "p50 alert", "p99 alert")
    for model in ("null", "default"):
        r = result[model]
        alert50 = "-" if r["alert_latency_p50_s"] is None else f"{r['alert_latency_p50_s']:.2f}s"
        alert99 = "-" if r["alert_latency_p99_s"] is None else f"{r['alert_latency_p99_s']:.2f}s"
        table.add_row(model, f"{r['docs_per_s']:,.0f}", f"{r['latency_p50_s']:.2f}s",
                      f"{r['latency_p99_s']:.2f}s", f"{r['alerts']}/{r['bursts']}", alert50,
                      alert99)  # fmt: skip
    console.print(table)
    names = {"worker": "worker", "scoring": "scoring process", "broker": "broker",
             "database": "database server", "bench": "this bench"}  # fmt: skip
    for model in ("null", "default"):
        spent = result[model]["cpu_ms_per_doc"]
        console.print(
            f"{model}: CPU per document, ms of a core: "
            + ", ".join(f"{names[k]} {v:.2f}" for k, v in spent.items())
            + f"; {result[model]['cores_busy']:.2f} cores busy"
        )
    console.print(
        f"the ensemble alone ({result['ensemble']}): {result['ensemble_docs_per_s']:,.0f} docs/s "
        f"and {result['ensemble_cpu_ms_per_doc']:.2f} ms of a core per document "
        f"(one batch at a time {result['ensemble_ways']['one_batch_at_a_time']:,.0f}, a batch "
        f"per core at once {result['ensemble_ways']['batch_per_core']:,.0f}); "
        f"the pipeline runs at "
        f"{result['pipeline_over_ensemble']:.0%} of it ({result['database']})"
    )


@bench_app.command("delivery")
def bench_delivery(
    subscriptions: Annotated[int, typer.Option(help="webhook subscriptions, all matching")] = 20,
    rate: Annotated[float, typer.Option(help="alerts stored per second")] = 20.0,
    seconds: Annotated[float, typer.Option(help="how long alerts keep coming")] = 10.0,
    receiver_latency_ms: Annotated[
        float, typer.Option(help="the receiver answers this late (a remote one)")
    ] = 0.0,
    database_url: BenchDatabase = None,
    as_json: JsonOutput = False,
) -> None:
    """Webhook deliveries/s and delivery latency through the outbox, against plain sequential POSTs."""
    from bench.delivery import run

    _settings()
    logging.getLogger("riskwire.delivery").setLevel(logging.WARNING)
    say = (lambda _: None) if as_json else console.print
    result = run(subscriptions, rate, seconds, database_url, say, receiver_latency_ms)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"delivered {result['received']:,} of {result['deliveries']:,} webhooks "
        f"({result['offered_per_s']:,.0f}/s offered) at {result['deliveries_per_s']:,.0f}/s; "
        f"latency p50 {result['latency_p50_ms']:,.0f} ms, p99 {result['latency_p99_ms']:,.0f} ms, "
        f"max {result['latency_max_ms']:,.0f} ms ({result['database']})"
    )
    console.print(
        f"capacity: a burst of {result['burst_deliveries']:,} delivered in "
        f"{result['burst_seconds']:.1f}s = {result['capacity_per_s']:,.0f}/s; sequential POSTs "
        f"without the outbox: {result['baseline_sequential_per_s']:,.0f}/s "
        f"(outbox {result['outbox_vs_baseline']:.2f}x)"
    )


@bench_app.command("infer")
def bench_infer(
    data: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="texts (JSONL); default: FPB or bundled"),
    ] = None,
    n: Annotated[int, typer.Option(help="documents for the ensemble (a quarter for naive)")] = 2000,
    device: Annotated[
        str | None, typer.Option(help="also run 3 x BERT-base on this CUDA device")
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Docs/s of the default ensemble against a naive one-document-at-a-time pipeline baseline."""
    import sys

    from bench.infer import run

    settings = _settings()
    result = run(settings, data, n, device, say=lambda line: print(line, file=sys.stderr))
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"infer: ensemble {result['ensemble_docs_per_s']:,.1f} docs/s, naive "
        f"{result['naive_docs_per_s']:,.1f} docs/s: {result['ratio']:.2f}x"
    )


@bench_app.command("refit")
def bench_refit(
    desk: Annotated[
        Path,
        typer.Option(
            exists=True, dir_okay=False, help="labelled text like the desk's (JSONL, CSV)"
        ),
    ],
    held: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="rows to score on; default: --desk's test split"
        ),
    ] = None,
    also: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="another set, scored on its test split"),
    ] = None,
    keep: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True, dir_okay=False, help="rows every fit holds too (labels refit --data)"
        ),
    ] = None,
    ensemble: Annotated[
        str | None, typer.Option(help="ensemble file or name; default: the configured one's")
    ] = None,
    labels: Annotated[
        str, typer.Option(help="numbers of labels, comma-separated")
    ] = "50,100,300,1000",
    fusion: Annotated[str | None, typer.Option(help="default: the live fusion's")] = None,
    as_json: JsonOutput = False,
) -> None:
    """What a refit of the fusion on N of a desk's labels buys on text it never saw."""
    import sys

    from rich.table import Table

    from bench.refit import read_sets, run
    from models.factory import load_ensemble

    settings = _settings()
    try:
        counts = sorted({int(n) for n in labels.split(",") if n.strip()})
    except ValueError:
        raise RiskwireError(f"--labels {labels!r}: numbers, comma-separated") from None
    if not counts or counts[0] < 5:
        raise RiskwireError("--labels: at least one number, each at least 5")
    live = load_ensemble(ensemble or settings.ensemble, settings)
    desk_set, held_set, also_set, kept = read_sets(desk, held, also, keep or ())
    result = run(live, desk_set, held_set, counts, also_set, fusion, keep=kept,
                 say=lambda line: print(line, file=sys.stderr))  # fmt: skip
    if as_json:
        print(json.dumps(result))
        return
    table = Table("labels", "verdict", "held-out macro-F1 live → refit (Δ, 95%)", "ECE live → refit",
                  *(["--also macro-F1 live → refit (Δ)"] if also_set is not None else []))  # fmt: skip
    for row in result["rows"]:
        h = row["held"]
        cells = [
            f"{row['labels']:,}", "better" if row["better"] else "kept",
            f"{h['live']['macro_f1']:.3f} → {h['refit']['macro_f1']:.3f} "
            f"({h['macro_f1']['difference']:+.3f}, {h['macro_f1']['low']:+.3f} to "
            f"{h['macro_f1']['high']:+.3f})",
            f"{h['live']['ece']:.3f} → {h['refit']['ece']:.3f}",
        ]  # fmt: skip
        if "also" in row:
            a = row["also"]
            cells.append(f"{a['live']['macro_f1']:.3f} → {a['refit']['macro_f1']:.3f} "
                         f"({a['macro_f1']['difference']:+.3f})")  # fmt: skip
        table.add_row(*cells)
    console.print(
        f"{result['ensemble']} ({result['fusion']}), {result['held_rows']:,} held-out rows"
    )
    console.print(table)


@bench_app.command("ingest")
def bench_ingest(
    documents: Annotated[int, typer.Option(help="synthetic items")] = 20_000,
    database_url: Annotated[
        str | None,
        typer.Option(help="where to measure the shared story index (default: a temporary SQLite)"),
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Documents/s for normalise + link + cluster on this machine, against a bare JSON decode."""
    from bench.ingest import run

    _settings()
    result = run(documents, database_url)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"ingest: {result['ingest_per_s']:,.0f} documents/s for decode + normalise (HTML, time, URL, "
        f"language, entity links) + stories ({result['documents']:,} items; normalise "
        f"{result['normalise_per_s']:,.0f}/s, clustering {result['cluster_per_s']:,.0f}/s, JSON "
        f"decode alone {result['decode_per_s']:,.0f}/s)"
    )
    console.print(
        f"stories: {result['copies_found']:,} copies found of {result['true_copies']:,} "
        f"({result['stories']:,} stories); precision {result['copy_precision']:.3f}, recall "
        f"{result['copy_recall']:.3f}"
    )
    same = "the same stories" if result["shared_same_stories"] else "DIFFERENT stories"
    console.print(
        f"shared story index (as the worker runs it, on {result['shared_database']}): "
        f"{result['shared_cluster_per_s']:,.0f} documents/s, {same} as in memory"
    )
    for name, key in (
        ("tuning sample", "linking_tuned"),
        ("first held-out sample", "linking_heldout"),
        ("second held-out sample", "linking_heldout2"),
    ):
        m = result[key]
        console.print(
            f"entity linking ({result['companies']} companies), {name}: precision "
            f"{m['precision']:.3f}, recall {m['recall']:.3f} over {m['links']:.0f} links"
        )


@keys_app.command("create")
def keys_create(
    name: str,
    scope: Annotated[
        list[str],
        typer.Option(help="alerts:read, subscriptions:write, replays or admin (repeatable)"),
    ],
) -> None:
    """Create a key and print it once: only its hash is kept."""
    from storage import delivery

    settings = _settings()
    sessions = _sessions(settings)
    try:
        with sessions.begin() as session:
            token = delivery.create_api_key(session, name, scope, datetime.now(UTC))
    except ValueError as exc:
        raise RiskwireError(str(exc)) from None
    console.print(f"key for {name!r} ({', '.join(sorted(set(scope)))}); it is not shown again:")
    console.print(token, highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their scopes and last use (never their secrets)."""
    from rich.table import Table
    from sqlalchemy import select

    from storage.tables import ApiKeyRow

    sessions = _sessions(_settings())
    table = Table("id", "name", "scopes", "created", "last used", "revoked")
    with sessions() as session:
        for k in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)):
            table.add_row(
                k.id, k.name, ", ".join(k.scopes), k.created_at.isoformat(timespec="seconds"),
                k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "-",
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
            )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once; its subscriptions stay, and stop being manageable."""
    from storage import delivery

    sessions = _sessions(_settings())
    with sessions.begin() as session:
        if not delivery.revoke_api_key(session, key_id, datetime.now(UTC)):
            raise RiskwireError(f"no active key {key_id!r}")
    console.print(f"key {key_id} revoked")


@app.command()
def check(
    timeout: Annotated[float, typer.Option(help="seconds to wait for the Kafka cluster")] = 10.0,
) -> None:
    """Check that the settings reach their services, starting nothing and changing nothing: the
    Kafka cluster (with its security settings; the stream's topics and their partitions) and the
    database (connects; its migrations). Exit code 0 when all is well, 1 otherwise."""
    from rich.markup import escape
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from riskwire.broker import partition_counts, partition_problems
    from riskwire.kafka_security import client_config
    from storage import make_engine
    from storage.migrate import current_revision, head_revision

    settings = _settings()
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # what it found is said below
    failed = False
    topics, want = settings.topics, settings.topic_partitions
    if settings.kafka_bootstrap is None:
        console.print("kafka: the embedded broker (riskwire demo starts one): nothing to check")
    else:
        try:
            counts = partition_counts(
                settings.kafka_bootstrap, topics.all(), timeout, **client_config(settings)
            )
        except RiskwireError as exc:
            console.print(f"[red]kafka:[/red] {escape(str(exc))}")
            failed = True
        else:
            console.print(f"kafka: {settings.kafka_bootstrap} answers "
                          f"({settings.kafka_security_protocol})")  # fmt: skip
            for name in topics.all():
                made = f"{counts[name]} partitions" if name in counts else None
                console.print(
                    f"  {name}: {made or f'missing (a worker or producer makes it: {want})'}"
                )
            refused, unused = partition_problems(counts, topics, want)
            for problem in refused:
                console.print(f"[red]  refused:[/red] {escape(problem)}")
            for warning in unused:
                console.print(f"[yellow]  unused:[/yellow] {escape(warning)}")
            failed |= bool(refused)
    url = settings.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    file = make_url(url).database if url.startswith("sqlite") else None
    if file and file != ":memory:" and not Path(file).exists():
        console.print(f"database: {shown} does not exist yet (riskwire db upgrade, or the first "
                      "worker, makes it)")  # fmt: skip
        raise typer.Exit(1 if failed else 0)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = current_revision(connection)
        head = head_revision(url)
        state = (
            "up to date" if current == head
            else f"at {current or 'no revision'}, code at {head}: riskwire db upgrade (or the "
                 "first worker) applies the rest"
        )  # fmt: skip
        console.print(f"database: {shown} connects; migrations {state}")
    except Exception as exc:  # any failure to connect is the answer here
        console.print(f"[red]database:[/red] {escape(f'{shown}: {type(exc).__name__}: {exc}')}")
        failed = True
    finally:
        engine.dispose()
    if failed:
        raise typer.Exit(1)


@app.command()
def deliver() -> None:
    """Run the delivery dispatcher (webhooks, Grafana, Alertmanager) until Ctrl-C; use it when the
    API runs with RISKWIRE_DELIVER_IN_API=false, or to add dispatchers on PostgreSQL. Serves its
    Prometheus metrics on RISKWIRE_METRICS_PORT, if set."""
    from riskwire.delivery.dispatcher import Dispatcher
    from riskwire.service_metrics import ServiceMetrics

    settings = _settings()
    sessions = _sessions(settings)
    metrics = ServiceMetrics(sessions)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port, settings.metrics_address)
    dispatcher = Dispatcher(settings, sessions, metrics=metrics)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"delivering to: {', '.join(sorted(dispatcher.senders))}")
    try:
        dispatcher.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        dispatcher.close()


@app.command()
def deliveries(
    state: Annotated[str | None, typer.Option("--status", help="pending, delivered, dead")] = None,
    limit: int = 50,
) -> None:
    """The newest deliveries: destination, status, attempts and the last error."""
    from rich.table import Table
    from sqlalchemy import select

    from storage.tables import DeliveryRow

    sessions = _sessions(_settings())
    query = select(DeliveryRow).order_by(DeliveryRow.created_at.desc(), DeliveryRow.id).limit(limit)
    if state:
        query = query.where(DeliveryRow.status == state)
    table = Table("id", "target", "subscription", "status", "attempts", "last error")
    with sessions() as session:
        for d in session.scalars(query):
            table.add_row(
                d.id[:12], d.target, d.subscription_id or "-", d.status, str(d.attempts),
                (d.last_error or "")[:80],
            )  # fmt: skip
    console.print(table)


def main() -> None:
    try:
        app()
    except RiskwireError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


def _duration(value: str) -> timedelta:
    """``90m``, ``2h``, ``3d`` (or plain minutes)."""
    units = {"m": 1, "h": 60, "d": 24 * 60}
    text = value.strip().lower()
    try:
        if text and text[-1] in units:
            return timedelta(minutes=float(text[:-1]) * units[text[-1]])
        return timedelta(minutes=float(text))
    except ValueError:
        raise RiskwireError(f"--for {value!r} is not a duration such as 90m, 2h or 3d") from None


@rules_app.command("check")
def rules_check(path: Path) -> None:
    """Parse a rules file and print the rules it declares (exit code 2 if it is wrong)."""
    from streams.pipeline.rules import load_rules, rules_digest

    rules = load_rules(path)
    _print_rules(rules)
    console.print(f"{len(rules)} rules, digest {rules_digest(rules)}")


def _print_rules(rules: Any) -> None:
    from rich.table import Table

    table = Table("name", "type", "group", "window", "conditions", "critical", "severity", "family")
    for r in rules:
        conditions = ", ".join(f"{n} {v:g}" for n, v in r.conditions)
        critical = ", ".join(f"{n} {v:g}" for n, v in r.strict) or "-"
        minutes = int(r.window.total_seconds() // 60)
        window = f"{minutes} min" + (f" x{r.consecutive}" if r.consecutive > 1 else "")
        table.add_row(r.name, r.type, r.group, window, conditions, critical, r.severity,
                      r.family_name)  # fmt: skip
    console.print(table)


@rules_app.command("load")
def rules_load(path: Path) -> None:
    """Store a rules file in the database: workers without RISKWIRE_RULES_FILE run the newest
    loaded set when they start."""
    from storage.repository import store_rule_set
    from streams.pipeline.rules import load_rules, rules_as_data, rules_digest

    rules = load_rules(path)
    with _sessions(_settings()).begin() as session:
        number = store_rule_set(session, rules_as_data(rules), rules_digest(rules), str(path),
                                datetime.now(UTC))  # fmt: skip
    console.print(f"loaded {len(rules)} rules as rule set {number} ({rules_digest(rules)}); "
                  "workers pick it up when they (re)start")  # fmt: skip


@rules_app.command("show")
def rules_show() -> None:
    """The rules live workers run: the rules file if one is set, else the newest loaded set."""
    from streams.pipeline.rules import configured_rules

    settings = _settings()
    _print_rules(configured_rules(settings, _sessions(settings)))


@silence_app.command("add")
def silence_add(
    duration: Annotated[str, typer.Option("--for", help="how long: 90m, 2h, 3d")],
    comment: Annotated[str, typer.Option(help="why: shown with every muted alert")],
    ticker: Annotated[str | None, typer.Option(help="a ticker, sector:<name> or market")] = None,
    rule: Annotated[str | None, typer.Option(help="a rule name")] = None,
    family: Annotated[str | None, typer.Option(help="a rule family")] = None,
    by: Annotated[str, typer.Option(help="who silences")] = "cli",
) -> None:
    """Mute notifications (webhooks, Grafana, Alertmanager, streams) of matching alerts; they
    are still stored. Leave out a matcher to match any value."""
    from storage import delivery

    now = datetime.now(UTC)
    with _sessions(_settings()).begin() as session:
        row = delivery.create_silence(
            session, ticker=ticker, rule=rule, family=family, duration=_duration(duration),
            created_by=by, comment=comment, now=now,
        )  # fmt: skip
        console.print(f"silence {row.id} until {row.expires_at.isoformat(timespec='seconds')}")


@silence_app.command("list")
def silence_list(
    all_: Annotated[bool, typer.Option("--all", help="expired ones too")] = False,
) -> None:
    """Silences, active ones by default."""
    from rich.table import Table
    from sqlalchemy import select

    from storage import delivery
    from storage.tables import SilenceRow

    now = datetime.now(UTC)
    with _sessions(_settings())() as session:
        rows = (
            list(session.scalars(select(SilenceRow).order_by(SilenceRow.created_at)))
            if all_
            else delivery.active_silences(session, now)
        )
    table = Table("id", "ticker", "rule", "family", "until", "by", "comment")
    for r in rows:
        table.add_row(r.id, r.ticker or "*", r.rule or "*", r.family or "*",
                      r.expires_at.isoformat(timespec="seconds"), r.created_by, r.comment)  # fmt: skip
    console.print(table)


@silence_app.command("expire")
def silence_expire(silence_id: str) -> None:
    """End a silence now."""
    from storage import delivery

    with _sessions(_settings()).begin() as session:
        if not delivery.expire_silence(session, silence_id, datetime.now(UTC)):
            raise RiskwireError(f"no active silence {silence_id}")
    console.print(f"silence {silence_id} expired")


def _since(value: str | None) -> datetime | None:
    """``--since``: an ISO-8601 time, or a duration back from now (``90m``, ``2h``, ``3d``)."""
    if value is None:
        return None
    if value.strip()[-1:].lower() in ("m", "h", "d"):
        try:
            return datetime.now(UTC) - _duration(value)
        except RiskwireError:
            pass
    return _when(value, "--since")


StageOption = Annotated[
    list[str] | None, typer.Option("--stage", help="the stage that refused it (repeatable)")
]
StatusOption = Annotated[
    list[str] | None,
    typer.Option("--status", help="dead, redriven or failed-again (repeatable)"),
]
ReasonOption = Annotated[str | None, typer.Option(help="the reason contains this (any case)")]
SinceOption = Annotated[
    str | None, typer.Option(help="last seen since: ISO-8601, or back from now (90m, 2h, 3d)")
]


def _selection(
    ids: list[str] | None, stage: list[str] | None, status: list[str] | None,
    reason: str | None, since: str | None,
) -> Any:  # fmt: skip
    from storage.deadletters import Selection

    try:
        return Selection(
            ids=tuple(i.lower() for i in ids or ()), stages=tuple(stage or ()),
            statuses=tuple(status or ()), reason=reason, since=_since(since),
        )  # fmt: skip
    except ValueError as exc:
        raise RiskwireError(str(exc)) from None


@deadletters_app.command("list")
def deadletters_list(
    stage: StageOption = None,
    status: StatusOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(help="at most this many, the latest seen first")] = 50,
    as_json: JsonOutput = False,
) -> None:
    """Dead letters, the latest seen first: when, stage, status, reason."""
    from rich.table import Table

    from riskwire.deadletters import describe
    from storage import deadletters

    selection = _selection(None, stage, status, reason, since)
    with _sessions(_settings())() as session:
        rows = deadletters.find(session, selection, limit)
        total = deadletters.count(session, selection)
    if as_json:
        print(json.dumps({"total": total, "letters": [describe(r) for r in rows]}))
        return
    table = Table("id", "last seen", "stage", "status", "topic", "reason")
    for r in rows:
        table.add_row(r.id, r.last_seen_at.isoformat(timespec="seconds"), r.stage,
                      deadletters.status_of(r), r.topic or "-", r.reason[:100])  # fmt: skip
    console.print(table)
    console.print(f"{len(rows)} of {total} shown")


@deadletters_app.command("summary")
def deadletters_summary(
    stage: StageOption = None,
    status: StatusOption = None,
    since: SinceOption = None,
    as_json: JsonOutput = False,
) -> None:
    """Dead letters counted by stage and cause (the reason with its numbers and values folded),
    with how many are dead, redriven and failed again."""
    from rich.table import Table

    from riskwire.deadletters import describe_tallies
    from storage import deadletters

    selection = _selection(None, stage, status, None, since)
    with _sessions(_settings())() as session:
        tallies = deadletters.summarise(session, selection)
    if as_json:
        print(json.dumps(describe_tallies(tallies)))
        return
    table = Table("stage", "cause", "letters", "dead", "redriven", "failed again", "last seen")
    for t in tallies:
        seen = t.last_seen_at.isoformat(timespec="seconds") if t.last_seen_at else "-"
        table.add_row(t.stage, t.reason, str(t.letters), str(t.dead), str(t.redriven),
                      str(t.failed_again), seen)  # fmt: skip
    console.print(table)


@deadletters_app.command("show")
def deadletters_show(
    letter_id: Annotated[str, typer.Argument(help="an id, or its first 8 or more hex digits")],
    as_json: JsonOutput = False,
) -> None:
    """One dead letter whole: where and why it was refused, and its payload."""
    from riskwire.deadletters import describe
    from storage import deadletters

    selection = _selection([letter_id], None, None, None, None)
    with _sessions(_settings())() as session:
        rows = deadletters.find(session, selection, 2)
    if not rows:
        raise RiskwireError(f"no dead letter {letter_id}")
    if len(rows) > 1:
        raise RiskwireError(f"{letter_id} names more than one dead letter: give more digits")
    data = describe(rows[0], payload=True)
    if as_json:
        print(json.dumps(data))
        return
    payload = data.pop("payload")
    for name, value in data.items():
        console.print(f"[bold]{name}[/bold]: {value}", highlight=False)
    try:
        payload = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    console.print("[bold]payload[/bold]:")
    console.print(payload, highlight=False, markup=False)


@deadletters_app.command("redrive")
def deadletters_redrive(
    ids: Annotated[
        list[str] | None, typer.Argument(help="ids (or 8+ digit prefixes); or select by options")
    ] = None,
    stage: StageOption = None,
    status: StatusOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    all_: Annotated[
        bool, typer.Option("--all", help="every letter, when nothing else selects")
    ] = False,
    again: Annotated[
        bool, typer.Option(help="letters redriven already and not seen failing since, too")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="at most this many, the oldest seen first")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="say where each would go; send nothing")] = False,
    as_json: JsonOutput = False,
) -> None:
    """Send dead letters back into the stream once their cause is fixed: a raw record to its raw
    topic, a document to docs, a score to its group's topic, other bytes to the topic they came
    from. Late documents, payloads that are not the original bytes, and records that never reached
    a topic are refused, with the reason. Safe to repeat: the stream's writes are idempotent; a
    letter refused again shows as failed-again (`deadletters list`)."""
    from riskwire.deadletters import redrive

    selection = _selection(ids, stage, status, reason, since)
    if not selection.narrowed and not all_:
        raise RiskwireError(
            "say which letters: ids, --stage, --status, --reason, --since, or --all"
        )
    settings = _settings()
    sessions = _sessions(settings)
    with _spinner("redriving", quiet=as_json) as say:
        report = redrive(
            sessions, settings, selection, again=again, limit=limit, dry_run=dry_run,
            progress=lambda n: say(f"{n:,} letters read"),
        )  # fmt: skip
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        verb = "would send" if dry_run else "sent"
        console.print(f"{report.selected} selected; {verb} {report.sent_total}")
        for topic, n in sorted(report.sent.items()):
            console.print(f"  {n} to {topic}", highlight=False)
        for why, n in sorted(report.refused.items(), key=lambda kv: -kv[1]):
            console.print(f"  {n} refused: {why}", highlight=False)
        for why, n in sorted(report.failed.items(), key=lambda kv: -kv[1]):
            console.print(f"  {n} not sent (left as they were): {why}", highlight=False)
    if report.failed:
        raise SystemExit(1)


LabelledSinceOption = Annotated[
    str | None,
    typer.Option("--since", help="labelled since: ISO-8601, or back from now (90m, 2h, 3d)"),
]
LabellerOption = Annotated[
    list[str] | None, typer.Option("--by", help="only this labeller's labels (repeatable)")
]
KindOption = Annotated[str | None, typer.Option(help="only documents of this kind (news, social)")]


def _label_selection(since: str | None, by: list[str] | None, kind: str | None) -> Any:
    from storage.labels import LabelSelection

    if kind is not None and kind not in ("news", "social"):
        raise RiskwireError(f"--kind {kind!r}: news or social")
    return LabelSelection(since=_since(since), labellers=tuple(by or ()), kind=kind)


def _login() -> str:
    """The labeller a label is by when --by is not given: the login name, else ``cli``."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        return "cli"


@labels_app.command("add")
def labels_add(
    document_id: Annotated[str, typer.Argument(help="the document's id")],
    label: Annotated[str, typer.Argument(help="negative, neutral or positive")],
    by: Annotated[
        str | None, typer.Option("--by", help="who says so; default: the login name")
    ] = None,
    note: Annotated[str | None, typer.Option(help="why, for whoever reads it later")] = None,
) -> None:
    """Label a document's sentiment (replacing this labeller's label before)."""
    from storage import labels

    labeller = by or _login()
    try:
        with _sessions(_settings()).begin() as session:
            row = labels.put(session, document_id, labeller, label, datetime.now(UTC), note)
            console.print(f"{row.document_id}: {row.label} (by {row.labeller})", highlight=False)
    except labels.LabelError as exc:
        raise RiskwireError(str(exc)) from None


@labels_app.command("remove")
def labels_remove(
    document_id: Annotated[str, typer.Argument(help="the document's id")],
    by: Annotated[
        str | None, typer.Option("--by", help="whose label; default: the login name")
    ] = None,
) -> None:
    """Take a label back."""
    from storage import labels

    labeller = by or _login()
    with _sessions(_settings()).begin() as session:
        if not labels.remove(session, document_id, labeller):
            raise RiskwireError(f"{labeller} has no label on {document_id}")
    console.print(f"removed {labeller}'s label of {document_id}", highlight=False)


@labels_app.command("import")
def labels_import(
    path: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="labels: JSONL, or CSV with a header"),
    ],
    by: Annotated[
        str | None,
        typer.Option("--by", help="labeller of rows that name none; default: the login name"),
    ] = None,
    as_json: JsonOutput = False,
) -> None:
    """Labels in bulk (from a spreadsheet, another tool): rows with document_id and label, and
    optionally labeller and note. Safe to import again; rows that cannot be labels are listed with
    the reason and the rest are stored (exit 1 when any was refused)."""
    from riskwire.labels import import_labels, read_label_rows

    sessions = _sessions(_settings())
    report = import_labels(sessions, read_label_rows(path), by or _login(),
                           datetime.now(UTC))  # fmt: skip
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        console.print(f"{report.stored:,} labels stored; {len(report.refused):,} refused")
        for where, why in report.refused[:20]:
            console.print(f"  {where}: {why}", highlight=False)
        if len(report.refused) > 20:
            console.print(f"  … and {len(report.refused) - 20:,} more (--json lists them all)")
    if report.refused:
        raise SystemExit(1)


@labels_app.command("list")
def labels_list(
    since: LabelledSinceOption = None,
    by: LabellerOption = None,
    kind: KindOption = None,
    limit: Annotated[int, typer.Option(help="at most this many, the latest first")] = 50,
    as_json: JsonOutput = False,
) -> None:
    """Labels, the latest first: document, labeller, label, note."""
    from rich.table import Table

    from riskwire.labels_api import label_out
    from storage import labels

    selection = _label_selection(since, by, kind)
    with _sessions(_settings())() as session:
        rows = [label_out(r) for r in labels.page(session, selection, None, limit)]
    if as_json:
        print(json.dumps({"labels": rows}))
        return
    table = Table("labelled at", "document", "labeller", "label", "note")
    for r in rows:
        table.add_row(r["labelled_at"][:19], r["document_id"], r["labeller"], r["label"],
                      (r["note"] or "")[:80])  # fmt: skip
    console.print(table)


@labels_app.command("queue")
def labels_queue(
    since: Annotated[
        str | None,
        typer.Option(
            help="published since: ISO-8601, or back from now (90m, 2h, 3d); "
            "default: the week before the newest live score"
        ),
    ] = None,
    rank: Annotated[
        str, typer.Option(help="uncertainty (the fused label least sure) or disagreement")
    ] = "uncertainty",
    kind: KindOption = None,
    limit: Annotated[int, typer.Option(help="how many")] = 20,
    as_json: JsonOutput = False,
) -> None:
    """Documents worth labelling next: unlabelled, scored live, where the models were least sure
    or argued most, one per story."""
    from rich.table import Table

    from riskwire.labels_api import queued_out
    from storage import labels

    _label_selection(None, None, kind)  # checks --kind
    start = _since(since)
    try:
        with _sessions(_settings())() as session:
            items = [queued_out(d, s) for d, s in labels.queue(session, start, limit, rank, kind)]
    except labels.LabelError as exc:
        raise RiskwireError(str(exc)) from None
    if as_json:
        print(json.dumps({"items": items}))
        return
    table = Table("document", "published", "model said", "confidence", "disagreement", "title")
    for i in items:
        table.add_row(i["document_id"], i["published_at"][:16], i["label"],
                      f"{i['confidence']:.2f}", f"{i['disagreement']:.2f}",
                      (i["title"] or i["text"])[:90])  # fmt: skip
    console.print(table)
    console.print("label one: riskwire labels add DOCUMENT_ID negative|neutral|positive")


@labels_app.command("export")
def labels_export(
    out: Annotated[
        Path | None, typer.Option(help="JSONL file to write; default: standard output")
    ] = None,
    since: LabelledSinceOption = None,
    by: LabellerOption = None,
    kind: KindOption = None,
) -> None:
    """Labelled documents as JSONL (text, label, and where each came from), one line a document,
    its label the majority's where labellers differ (ties left out): what `models eval --data`
    and `models train --data` read."""
    from riskwire.labels import export, open_out

    settings = _settings()
    with open_out(out) as handle:
        report = export(_sessions(settings), _label_selection(since, by, kind), handle)
    where = Console(stderr=True)
    by_label = ", ".join(f"{n:,} {label}" for label, n in report.by_label.items())
    where.print(f"{report.rows:,} documents ({by_label}); {report.disputed:,} with labellers "
                f"in disagreement, resolved by majority; {report.tied:,} tied, left out"
                + (f"; written to {out}" if out else ""), highlight=False)  # fmt: skip


@labels_app.command("summary")
def labels_summary(
    since: LabelledSinceOption = None,
    by: LabellerOption = None,
    kind: KindOption = None,
    run: Annotated[
        str, typer.Option(help="whose scores: live, or a replay job's id (a candidate model)")
    ] = "live",
    as_json: JsonOutput = False,
) -> None:
    """How the models agree with the analysts: per model version that scored labelled documents
    live (or in a replay, --run), accuracy, macro- and weighted-F1, calibration error and a
    confusion matrix."""
    from rich.table import Table

    from riskwire.labels import agreement
    from storage import labels

    selection = _label_selection(since, by, kind)
    with _sessions(_settings())() as session:
        versions, resolution = agreement(session, selection, run)
        per_labeller = labels.counts(session, selection)
    summary = {
        "run": run, "documents": len(resolution.labels), "tied": len(resolution.tied),
        "disputed": resolution.disputed, "labellers": per_labeller,
        "models": [v.as_dict() for v in versions],
    }  # fmt: skip
    if as_json:
        print(json.dumps(summary))
        return
    console.print(
        f"{summary['documents']:,} labelled documents by {len(per_labeller)} labellers "
        f"({resolution.disputed:,} resolved by majority, {len(resolution.tied):,} tied)"
    )
    table = Table(f"model version ({run})", "documents", "accuracy", "macro-F1", "weighted-F1",
                  "ECE")  # fmt: skip
    for v in versions:
        table.add_row(v.model_version, f"{v.n:,}", f"{v.accuracy:.3f}", f"{v.macro_f1:.3f}",
                      f"{v.weighted_f1:.3f}", f"{v.ece:.3f}")  # fmt: skip
    console.print(table)
    for v in versions[:1]:
        matrix = Table(f"analysts (rows) / {v.model_version} (columns)", *LABELS_)
        for label, row in zip(LABELS_, v.confusion, strict=True):
            matrix.add_row(label, *(f"{n:,}" for n in row))
        console.print(matrix)


@labels_app.command("refit")
def labels_refit(
    ensemble: Annotated[
        str | None,
        typer.Option(help="ensemble or routing file, or a name; default: the configured one"),
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="only this ensemble of a routing file (news, social)")
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            exists=True,
            dir_okay=False,
            help="labelled rows to fit on beside the analysts' (JSONL or CSV): the public rows "
            "the fusion was first fitted on, say",
        ),
    ] = None,
    fusion: Annotated[
        str | None, typer.Option(help="soft, stacking or dawid-skene; default: the live one's")
    ] = None,
    kind: KindOption = None,
    min_labels: Annotated[
        int, typer.Option(min=1, help="refit an ensemble only with this many labelled documents")
    ] = 50,
    min_new: Annotated[
        int,
        typer.Option(
            min=0, help="… and only when this many labels were given since its last refit"
        ),
    ] = 0,
    folds: Annotated[int, typer.Option(min=2, help="folds of the labels to judge the refit")] = 5,
    standard_errors: Annotated[
        float,
        typer.Option(
            "--se",
            min=0.0,
            help="standard errors (of the paired per-document difference) by which the refit's "
            "log-loss must beat the live fusion's",
        ),
    ] = 2.0,
    promote: Annotated[
        bool, typer.Option(help="put a refit that is better in the live file's place")
    ] = False,
    as_json: JsonOutput = False,
) -> None:
    """Refit each ensemble's fusion on the analysts' labels of the documents routed to it, judge
    it against the live fusion on those labels (out of fold), write and register it, and with
    --promote let a better one go live (running workers load it without a restart)."""
    from rich.table import Table

    from riskwire.refit import refit

    settings = _settings()
    if kind is not None:
        _label_selection(None, None, kind)
    extra = _labelled(data, "all") if data else None
    out = Console(stderr=True) if as_json else console
    with out.status("reading the labels") as spinner:
        outcomes, entries = refit(
            settings, _sessions(settings), ensemble or settings.ensemble, only=only, kind=kind,
            extra=extra, fusion=fusion, folds=folds, standard_errors=standard_errors,
            min_labels=min_labels, min_new=min_new, promote=promote, status=spinner.update,
        )  # fmt: skip
    if entries:
        _register(settings, entries)
    if as_json:
        print(json.dumps({"ensembles": [o.as_dict() for o in outcomes]}))
        return
    table = Table("ensemble", "labels", "live macro-F1 / log-loss", "refit (out of fold)",
                  "macro-F1 refit − live (95%)", "verdict")  # fmt: skip
    for o in outcomes:
        t = o.trial
        table.add_row(
            o.ensemble, f"{o.labels:,}" + (f" ({t.rows:,} judged)" if t and t.seen else ""),
            f"{t.live['macro_f1']:.3f} / {t.live['log_loss']:.3f}" if t else "–",
            f"{t.refit['macro_f1']:.3f} / {t.refit['log_loss']:.3f}" if t else "–",
            f"{t.macro_f1['difference']:+.3f} ({t.macro_f1['low']:+.3f} to "
            f"{t.macro_f1['high']:+.3f})" if t else "–",
            o.status,
        )  # fmt: skip
    out.print(table)
    for o in outcomes:
        out.print(f"{o.ensemble} ({o.live_version}): {o.status}: {o.reason}", highlight=False)
        if o.candidate:
            out.print(f"  refit {o.candidate_version} written to {o.candidate}", highlight=False)
        if o.promoted_to:
            out.print(f"  now live in {o.promoted_to}; running workers load it within "
                      "RISKWIRE_MODEL_RELOAD_S (or when they next start)",
                      highlight=False)  # fmt: skip

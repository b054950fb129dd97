"""End-to-end pipeline bench: publish -> broker -> worker (normalise, score, risk) -> database.

    riskwire bench pipeline [--documents 3000] [--rate 40] [--seconds 20] [--database-url URL] [--json]

For each model (a null member that costs nothing, then the default ensemble) a fresh worker runs
against the embedded broker and a database of its own (SQLite by default; with ``--database-url``, a
new database on that PostgreSQL server, dropped afterwards):

* **throughput**: ``documents`` news items published at once (a backlog); documents/s until the
  last one's risk row is stored;
* **latency**: items published live at ``rate``/s for ``seconds``, each with a burst of five
  strongly negative items about a fresh name every two seconds: p50/p99 from publish to the
  item's risk row being stored, and (where the model sees the bursts as negative) from publishing
  a burst's fifth item to its negative-surge alert being stored.

Baseline in the same run: the default ensemble scoring the same documents in this process, with
nothing else around it, the faster of one batch at a time on every core and one batch per core at
once (``ensemble_ways``). The ratio pipeline / ensemble says what the stream costs.

Where it goes: over the throughput phase, the CPU time per document of each process the run uses
(``cpu_ms_per_doc``: the worker, its scoring process, the broker, this process publishing and
polling, and a PostgreSQL server on this machine), and how many cores were busy; and the
ensemble's own CPU time per document alone. When the pipeline is CPU-bound, its ratio to the
ensemble alone is about the ensemble's CPU per document over everyone's.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from ingest import RawProducer
from models.factory import trained_dir
from riskwire.broker import EmbeddedBroker
from riskwire.records import Kind, RawRecord
from riskwire.settings import Settings, load_settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.engine import fresh_database
from storage.tables import AlertEventRow, TickerSentimentRow
from streams.pipeline import normalise

NAMES = [f"N{i:03d}" for i in range(120)]
CALM = ["reports quarterly results in line", "names a new director", "beats estimates",
        "holds its annual meeting", "raises its dividend", "files its annual report"]  # fmt: skip
BAD = ["plunge after profit warning", "cuts outlook as demand collapses", "misses estimates badly",
       "faces fraud probe, shares plunge", "downgrade after losses widen"]  # fmt: skip
RULES = """
rules:
  - {name: surge, type: negative_surge, window_minutes: 120, hop_minutes: 30, min_documents: 5,
     negative_share: 0.6, mean_score: -0.2}
"""
POLL_LEAST_S, POLL_MOST_S = 0.05, 0.5  # how often Run.wait_stored looks
DEFAULT = ""  # no members by name: the configured ensemble file, as a worker runs it


class Run:
    """One worker on its own topics and database."""

    def __init__(self, broker: EmbeddedBroker, members: str, base: Path, database_url: str | None):
        run = uuid.uuid4().hex[:8]
        self.dir = base / run
        self.dir.mkdir(parents=True)
        self.database = ExitStack()  # on PostgreSQL: a database of this run's own, dropped after
        url = (
            self.database.enter_context(fresh_database(database_url, "riskwire_bench"))
            if database_url
            else f"sqlite:///{self.dir / 'bench.db'}"
        )
        trained = trained_dir(load_settings()).resolve()
        if trained.is_dir():  # the models trained here (``make models``), as the ensemble alone
            (self.dir / "models").symlink_to(trained, target_is_directory=True)
        upgrade(url)
        rules = self.dir / "rules.yaml"
        rules.write_text(RULES)
        self.settings: Settings = load_settings(
            kafka_bootstrap=broker.bootstrap, database_url=url, data_dir=self.dir,
            topic_prefix=f"bench-{run}", consumer_group=f"bench-{run}", ensemble_members=members,
            rules_file=rules, reorder_idle_s=0.5, score_batch_wait_s=0.1, sector_groups=False,
        )  # fmt: skip
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)
        self.worker = spawn_worker(self.settings, self.dir / "worker.log")
        self.producer = RawProducer(broker.bootstrap, self.settings.topics)
        self.count = 0

    def stored(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(TickerSentimentRow)) or 0)

    def wait_stored(self, n: int, timeout: float = 600) -> None:
        """Until ``n`` risk rows are stored. Each poll costs this process and the database CPU
        that the run's figures count against the pipeline, so it polls every 50 ms only near the
        end (by the rate so far) and at most every 0.5 s before."""
        deadline = time.monotonic() + timeout
        first: tuple[float, int] | None = None
        while (stored := self.stored()) < n:
            now = time.monotonic()
            if self.worker.poll() is not None or now > deadline:
                log = (self.dir / "worker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the worker stopped or stalled at {stored}/{n}:\n{log}")
            first = first or (now, stored)
            rate = (stored - first[1]) / (now - first[0]) if now > first[0] else 0.0
            left = (n - stored) / rate if rate > 0 else 0.0
            time.sleep(min(POLL_MOST_S, max(POLL_LEAST_S, left / 2)))

    def publish(self, items: list[RawRecord]) -> float:
        """Publish; returns the wall time it was handed to the broker."""
        self.producer.publish(items)
        self.count += len(items)
        return time.time()

    def close(self) -> None:
        stop_worker(self.worker)
        self.producer.close()
        self.engine.dispose()
        self.database.close()


LOCAL_HOSTS = (None, "", "localhost", "127.0.0.1", "::1")


class CpuMeter:
    """CPU seconds (user + system) of the processes a run uses: the worker, its children (the
    scoring process), the broker, this process, and PostgreSQL's processes when the server is on
    this machine. A process that is gone by a reading is left out of it."""

    def __init__(self, worker_pid: int, broker_pid: int | None, database_url: str | None):
        self.worker_pid, self.broker_pid = worker_pid, broker_pid
        self.postgres_here = database_url is not None and make_url(database_url).host in LOCAL_HOSTS

    def read(self) -> dict[str, float]:
        out = {"worker": 0.0, "scoring": 0.0, "broker": 0.0, "bench": _seconds(psutil.Process())}
        try:
            worker = psutil.Process(self.worker_pid)
            out["worker"] = _seconds(worker)
            out["scoring"] = sum(_seconds(c) for c in worker.children(recursive=True))
            if self.broker_pid is not None:
                out["broker"] = _seconds(psutil.Process(self.broker_pid))
        except psutil.Error:
            pass
        if self.postgres_here:
            out["database"] = sum(
                _seconds(p) for p in psutil.process_iter(["name"])
                if p.info["name"] in ("postgres", "postmaster")
            )  # fmt: skip
        return out

    @staticmethod
    def per_document(
        before: dict[str, float], after: dict[str, float], documents: int, wall: float
    ) -> tuple[dict[str, float], float]:
        """ms of a core per document, per process; and the cores busy over ``wall`` seconds."""
        spent = {k: max(0.0, after[k] - before.get(k, 0.0)) for k in after}
        per_doc = {k: round(v / documents * 1000, 3) for k, v in spent.items()}
        return per_doc, round(sum(spent.values()) / wall, 2)


def _seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def item(i: int, name: str, title: str, at: datetime) -> RawRecord:
    return RawRecord(
        source=f"bench-{i % 7}", kind=Kind.NEWS, fetched_at=at,
        payload={"id": f"b{i}", "title": f"{name} {title} (item {i})", "tickers": [name],
                 "published_at": at.isoformat()},
    )  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    broker: EmbeddedBroker, members: str, base: Path, documents: int, rate: float,
    seconds: float, database_url: str | None, say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(7)
    run = Run(broker, members, base, database_url)
    try:
        start = datetime.now(UTC) - timedelta(days=1)
        # the models load; the topics fill. Older than the backlog, as a stream's past is: a
        # newer one put every backlog document behind the market group's newest, out of
        # event-time order (handled, but not the common case, and each one logged)
        run.publish([item(0, "WARM", "warms up", start - timedelta(minutes=1))])
        run.wait_stored(1, timeout=300)
        say(f"  {members or 'default'}: worker ready; {documents} items as a backlog")
        backlog = [
            item(i, rng.choice(NAMES), rng.choice(CALM), start + timedelta(seconds=10 * i))
            for i in range(1, documents + 1)
        ]
        meter = CpuMeter(run.worker.pid, broker.pid, database_url)
        cpu_before = meter.read()
        began = time.perf_counter()
        run.publish(backlog)
        run.wait_stored(run.count)
        wall = time.perf_counter() - began
        throughput = documents / wall
        cpu_ms_per_doc, cores_busy = CpuMeter.per_document(cpu_before, meter.read(), documents,
                                                            wall)  # fmt: skip
        say(
            f"  {members or 'default'}: {throughput:,.0f} docs/s; now {rate:g} items/s for {seconds:g} s"
        )

        sent: dict[str, float] = {}  # document id -> publish wall time
        triggers: dict[str, float] = {}  # burst name -> publish time of its fifth item
        i, burst = documents + 1, 0
        t_end = time.monotonic() + seconds
        next_burst = time.monotonic()
        while time.monotonic() < t_end:
            tick = time.monotonic()
            at = datetime.now(UTC)
            batch = [
                item(i + k, rng.choice(NAMES), rng.choice(CALM), at)
                for k in range(max(1, int(rate / 10)))
            ]
            i += len(batch)
            bursting = tick >= next_burst
            if bursting:
                name = f"S{burst:03d}"
                batch += [item(i + k, name, BAD[k], at) for k in range(5)]
                i += 5
            wall = run.publish(batch)
            for raw in batch:
                sent[normalise(raw).id] = wall
            if bursting:
                triggers[f"S{burst:03d}"] = wall
                burst += 1
                next_burst = tick + 2.0
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        run.wait_stored(run.count)
        with run.sessions() as session:
            rows = session.execute(
                select(TickerSentimentRow.document_id, TickerSentimentRow.stored_at)
            ).all()
            alerts = session.execute(
                select(AlertEventRow.ticker, AlertEventRow.created_at).where(
                    AlertEventRow.state == "firing"
                )
            ).all()
        lags = [
            (stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored).timestamp() - sent[d]
            for d, stored in rows
            if d in sent and stored is not None
        ]
        alert_lags = [
            (at.replace(tzinfo=UTC) if at.tzinfo is None else at).timestamp() - triggers[t]
            for t, at in alerts
            if t in triggers
        ]
        return {
            "docs_per_s": round(throughput, 1),
            "latency_p50_s": round(percentile(lags, 0.5), 3),
            "latency_p99_s": round(percentile(lags, 0.99), 3),
            "alerts": len(alert_lags),
            "bursts": len(triggers),
            "alert_latency_p50_s": round(percentile(alert_lags, 0.5), 3) if alert_lags else None,
            "alert_latency_p99_s": round(percentile(alert_lags, 0.99), 3) if alert_lags else None,
            "cpu_ms_per_doc": cpu_ms_per_doc,
            "cores_busy": cores_busy,
        }
    finally:
        run.close()


def ensemble_alone(documents: int) -> tuple[dict[str, float], dict[str, float], str]:
    """The default ensemble on the same kind of documents, in this process, nothing else around
    it: its raw docs/s in batches of the worker's size, scored two ways: one batch at a time on
    torch's threads (one per core), and one batch per core at once, each on one thread (how the
    worker's scoring process runs them). The better of the two is the baseline. Also, each way's
    CPU time per document (ms of a core, this process's threads together)."""
    import torch

    from models.factory import build_ensemble
    from riskwire.worker import worker_cores
    from streams.pipeline import score_documents

    settings = load_settings()
    ensemble = build_ensemble(settings)
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=1)
    docs = [
        normalise(item(i, rng.choice(NAMES), rng.choice(CALM), start + timedelta(seconds=i)))
        for i in range(documents)
    ]
    size = settings.score_batch_size  # the worker's batch size
    batches = [docs[k : k + size] for k in range(0, len(docs), size)]
    score_documents(ensemble, batches[0])  # warm
    threads = torch.get_num_threads()
    cpu = {}
    began, cpu_began = time.perf_counter(), time.process_time()
    for batch in batches:
        score_documents(ensemble, batch)
    rates = {"one_batch_at_a_time": documents / (time.perf_counter() - began)}
    cpu["one_batch_at_a_time"] = (time.process_time() - cpu_began) / documents * 1000
    cores = worker_cores()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(lambda b: score_documents(ensemble, b), batches[:cores]))  # warm
            began, cpu_began = time.perf_counter(), time.process_time()
            list(pool.map(lambda b: score_documents(ensemble, b), batches))
        rates["batch_per_core"] = documents / (time.perf_counter() - began)
        cpu["batch_per_core"] = (time.process_time() - cpu_began) / documents * 1000
    finally:
        torch.set_num_threads(threads)
    return rates, cpu, ensemble.version


def run(
    documents: int, rate: float, seconds: float, database_url: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="riskwire-bench-"))
    out: dict[str, Any] = {"documents": documents, "rate": rate, "seconds": seconds}
    with EmbeddedBroker() as broker:
        out["null"] = measure(broker, "null", base, documents, rate, seconds, database_url, say)
        out["default"] = measure(broker, DEFAULT, base, documents, rate, seconds, database_url,
                                 say)  # fmt: skip
    say("  the ensemble alone, in this process")
    rates, cpu, version = ensemble_alone(documents)
    raw = max(rates.values())
    out["ensemble"] = version
    out["ensemble_docs_per_s"] = round(raw, 1)
    out["ensemble_ways"] = {way: round(rate, 1) for way, rate in rates.items()}
    out["ensemble_cpu_ms_per_doc"] = round(cpu[max(rates, key=rates.__getitem__)], 3)
    out["pipeline_over_ensemble"] = round(out["default"]["docs_per_s"] / raw, 3)
    out["database"] = "postgresql" if database_url and "postgres" in database_url else "sqlite"
    return out

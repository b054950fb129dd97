"""Run a stream worker, in this process or as a child process (the demo and the tests do the latter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from riskwire.exceptions import RiskwireError
from riskwire.settings import Settings


def run_worker(settings: Settings) -> None:
    """Block running a Faust worker with all flows until SIGINT/SIGTERM."""
    import faust

    from riskwire.broker import check_partitions, ensure_topics
    from riskwire.kafka_security import client_config
    from streams.app import create_app

    assert settings.kafka_bootstrap is not None
    security = client_config(settings)
    ensure_topics(
        settings.kafka_bootstrap, settings.topics.all(), settings.topic_partitions, **security
    )
    # topics made before (by hand, or with another setting) keep their own partition count
    check_partitions(
        settings.kafka_bootstrap, settings.topics, settings.topic_partitions, **security
    )
    app, context = create_app(settings)
    # Load the models before joining the consumer group: a member that spends its first seconds
    # loading weights misses heartbeats and sets off rebalances; this one is ready when it joins.
    try:
        context.load_ensemble()
    except Exception as exc:
        context.close()
        raise RiskwireError(f"cannot load the models: {type(exc).__name__}: {exc}") from exc
    apply_model_threads(settings)
    if settings.metrics_port is not None:
        from streams.metrics import METRICS

        try:
            METRICS.serve(settings.metrics_port, settings.metrics_address)
        except OSError as exc:
            context.close()
            raise RiskwireError(
                f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port}: {exc}"
            ) from exc
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        context.close()


def model_threads(settings: Settings, cores: int) -> int:
    """Torch threads for a worker's models: as set, else one core left to the stream stages.

    The stages run on the event loop while the model scores the next batch in a thread; torch's
    default of one thread per core made them contend for the cores (measured on 2 cores with the
    trained ensemble: 99.5–117.5 documents/s with 2 threads, 130 with 1)."""
    return settings.model_threads or max(1, cores - 1)


def scoring_threads(settings: Settings, cores: int) -> tuple[int, int]:
    """Batches a scoring process scores at once, and torch threads for each: as set, else one
    batch per core the worker may use (at most 8) and the cores shared out among them."""
    batches = settings.scoring_threads or min(cores, 8)
    return batches, settings.model_threads or max(1, cores // batches)


def worker_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def apply_model_threads(settings: Settings) -> int | None:
    """Set torch's thread count for this process, if the models use torch; returns it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    threads = model_threads(settings, worker_cores())
    torch.set_num_threads(threads)
    return threads


def spawn_worker(settings: Settings, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``riskwire worker`` as a child process configured by these settings."""
    env = {**os.environ, **settings.as_env()}
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "riskwire", "worker"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it has not gone after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return int(process.returncode)

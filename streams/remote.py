"""A worker's models in a process of their own, scoring several batches at once.

In the worker's process the models' Python (lexicon members, tokenisers, the glue between torch
calls) and the stream stages on the event loop take turns at one interpreter lock: a scoring
thread queues for it at every step while the stages hold it. In a child process the two run side
by side. The worker sends each batch's texts and routing keys down a pipe and gets the fused
judgements back; pickling them costs a few microseconds a document.

The child scores ``threads`` batches at once, each on its share of the cores (one torch thread
each on 2 cores), rather than one batch at a time on all of them. On 2 cores the shipped ensemble
alone scored 381–439 documents/s as two one-thread batches against 324–406 as one two-thread
batch, and a batch on one thread does not stall when the stream stages take its core for a moment
(a multi-threaded operator waits for its slowest thread). The worker from 249–257 to 270–278
documents/s (``riskwire bench pipeline``, runs interleaved).

The child is started with ``spawn`` (a fresh interpreter: no copy of the worker's event loop,
threads or broker connections), builds the configured ensemble, says it is ready, and answers
batches until the worker closes the pipe; once the worker has died (its end of the pipe is gone)
it leaves at its next read or reply, so a SIGKILLed worker leaves nothing behind that scores. If
the child dies (a crash in native code, the kernel's OOM killer) or hangs, the batches it had fail
with :class:`ScorerDied` and the next call starts a fresh child: the caller scores a failed batch
again one document at a time, so a document that kills the models is dead-lettered alone. A child
that cannot start again is retried with backoff, and the stream waits for it.

Models promoted while the worker runs (``riskwire labels refit --promote``, a new ensemble file)
are loaded by :meth:`RemoteScorer.reload` in a second child while the first goes on scoring; once
it is ready, batches go to it and the first ends when it has answered what it had, so the stream
never waits for a model load. Each batch's judgements come back with the version that made them.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from models.ensemble import Judgement
from models.exceptions import ModelError
from riskwire.settings import Settings

log = logging.getLogger(__name__)
START_TIMEOUT_S = 900.0  # building the models: large transformer members take minutes to load
BATCH_TIMEOUT_S = 600.0  # one batch; a child that takes longer is taken to hang, and replaced
RESTART_DELAY_S, RESTART_DELAY_MAX_S = 1.0, 60.0  # between tries to start a child again

Entries = list[tuple[str, str, dict[str, Any]]]


class ScorerDied(ModelError):
    """The scoring process went away (or hung) while it had a batch."""


def serve(
    conn: mp.connection.Connection, settings: Settings, threads: int, torch_threads: int
) -> None:
    """The child: build the scorer, say ``("ready", (version, entries))`` (or ``("error",
    reason)``), then answer ``(n, texts, keys)`` requests with ``(n, "ok", judgements)`` or
    ``(n, "error", reason)``, ``threads`` at a time (each on ``torch_threads``), until told to
    go (``None``) or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the worker decides
    from models.factory import make_ensemble

    try:
        scorer = make_ensemble(settings)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(torch_threads)  # a batch's; ``threads`` batches at once
        conn.send(("ready", (scorer.version, scorer.registry_entries())))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    sending = threading.Lock()

    def answer(n: int, texts: list[str], keys: list[Any]) -> None:
        try:
            reply: tuple[int, str, Any] = (n, "ok", scorer.judge_routed(texts, keys))
        except Exception as exc:
            reply = (n, "error", f"{type(exc).__name__}: {exc}")
        try:
            with sending:
                conn.send(reply)
        except OSError:  # the worker died while this batch was scored
            os._exit(0)

    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="score")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the worker died
            request = None
        if request is None:  # the worker is done with us, or gone
            os._exit(0)  # batches still in hand have no one to answer to
        n, texts, keys = request
        pool.submit(answer, n, texts, keys)


class RemoteScorer:
    """The configured ensemble (or router), scoring in a child process. Thread-safe: each caller's
    batch goes down the pipe at once, and the child answers up to ``threads`` at a time."""

    def __init__(self, settings: Settings, threads: int = 1, torch_threads: int = 1):
        self._settings = settings
        self.threads = max(1, threads)
        self.torch_threads = max(1, torch_threads)
        self._lock = threading.Lock()  # starting, stopping, sending
        self._numbers = itertools.count()
        self._waiting: dict[int, tuple[mp.connection.Connection, Future[list[Judgement]]]] = {}
        self._process: Any = None
        self._conn: mp.connection.Connection | None = None
        self.restarts = 0
        self.reloads = 0
        self._closed = threading.Event()
        self._reloading = threading.Lock()  # one reload at a time
        started = time.perf_counter()
        with self._lock:
            self.version, self.entries = self._start()
        log.info("scoring process %s ready in %.1fs", self.pid, time.perf_counter() - started)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def registry_entries(self) -> Entries:
        return list(self.entries)

    def _start(self) -> tuple[str, Entries]:
        """With the lock held: a child, scoring from now on."""
        process, conn, (version, entries) = self._launch()
        self._adopt(process, conn)
        return version, entries

    def _adopt(self, process: Any, conn: mp.connection.Connection) -> None:
        self._process, self._conn = process, conn
        threading.Thread(
            target=self._read, args=(conn, process), name="scorer-replies", daemon=True
        ).start()

    def _launch(self) -> tuple[Any, mp.connection.Connection, tuple[str, Entries]]:
        """A child that has loaded the models (not yet sent anything)."""
        context = mp.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve, args=(theirs, self._settings, self.threads, self.torch_threads),
            name="riskwire-scorer", daemon=True,
        )  # fmt: skip
        process.start()
        theirs.close()  # only the child holds its end: its death is our EOF
        try:
            if not ours.poll(START_TIMEOUT_S):
                raise ScorerDied(f"the scoring process did not load in {START_TIMEOUT_S:.0f}s")
            kind, payload = ours.recv()
        except (EOFError, OSError) as exc:
            ours.close()
            raise _died(process, "loading the models") from exc
        except BaseException:
            _end(ours, process)
            raise
        if kind != "ready":
            _end(ours, process)
            raise ModelError(f"the scoring process could not load the models: {payload}")
        return process, ours, payload

    def reload(self) -> str | None:
        """Load the configured models again in a new child while the old one goes on scoring;
        if their version differs, batches go to the new child from now on and the old one ends
        once it has answered what it had. Returns the new version, or None when it is the same.
        Models that cannot load raise :class:`ModelError`, and the old child goes on."""
        with self._reloading:
            process, conn, (version, entries) = self._launch()
            with self._lock:
                if version == self.version or self._closed.is_set():
                    old = None
                else:
                    old = self._conn, self._process
                    self._adopt(process, conn)
                    self.version, self.entries = version, entries
                    self.reloads += 1
            if old is None:
                _end(conn, process)
                return None
            threading.Thread(target=self._drain, args=old, name="scorer-drain", daemon=True).start()
            log.info("scoring process %s now scores with %s", self.pid, version)
            return version

    def _drain(self, conn: mp.connection.Connection | None, process: Any) -> None:
        """End a replaced child once every batch sent to it has its answer."""
        if conn is None:
            return
        deadline = time.monotonic() + BATCH_TIMEOUT_S
        while time.monotonic() < deadline and any(
            c is conn for c, _ in list(self._waiting.values())
        ):
            time.sleep(0.05)
        _end(conn, process)

    def _read(self, conn: mp.connection.Connection, process: Any) -> None:
        """Hand each reply to its caller; when the child goes, fail what it still had."""
        while True:
            try:
                n, kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            _, future = self._waiting.pop(n, (None, None))
            if future is None:
                continue
            if kind == "ok":
                future.set_result(payload)
            else:
                future.set_exception(ModelError(payload))
        with self._lock:
            if self._conn is conn:
                self._conn = self._process = None
                _end(conn, process)
            died = _died(process, "scoring")
            for n in [n for n, (c, _) in self._waiting.items() if c is conn]:
                self._waiting.pop(n)[1].set_exception(died)

    def judge_routed(self, texts: Sequence[str], keys: Sequence[Any]) -> list[Judgement]:
        """What the ensemble would say, from the child (blocking); a dead child is replaced."""
        return self.judge_versioned(texts, keys)[1]

    def judge_versioned(
        self, texts: Sequence[str], keys: Sequence[Any]
    ) -> tuple[str, list[Judgement]]:
        """``judge_routed``, with the version of the models that answered (a reload may change
        ``version`` while a batch is out)."""
        future: Future[list[Judgement]] = Future()
        with self._lock:
            self._running()
            conn, version = self._conn, self.version
            assert conn is not None
            n = next(self._numbers)
            self._waiting[n] = (conn, future)  # the child's death fails it
            try:
                conn.send((n, list(texts), list(keys)))
            except OSError:
                pass  # the reader sees the child go and fails the batch with how it went
        try:
            return version, future.result(BATCH_TIMEOUT_S)
        except FutureTimeout:
            with self._lock:
                if self._conn is conn:
                    self._kill()  # the reader fails every batch it had
            hung = f"the scoring process hung ({len(texts)} texts, {BATCH_TIMEOUT_S:.0f}s)"
            raise ScorerDied(hung) from None

    def _running(self) -> None:
        """With the lock held: a child to send to. One that died is started again; one that cannot
        start (its model files gone, the models changed on disk, no memory) is retried with
        backoff, logged each time, like a database that is down: the batch waits, and its input in
        Kafka, rather than dead-lettering documents that did nothing wrong."""
        delay = RESTART_DELAY_S
        while self._conn is None:
            if self._closed.is_set():
                raise ModelError("the scoring process is closed")
            self.restarts += 1
            log.warning("starting the scoring process again (restart %d)", self.restarts)
            try:
                version, entries = self._start()
                if version != self.version and self._settings.model_reload_s > 0:
                    log.warning("the models changed on disk: now scoring with %s (was %s)",
                                version, self.version)  # fmt: skip
                    self.version, self.reloads = version, self.reloads + 1
                if version == self.version:
                    self.entries = entries
                    return
                self._stop()
                raise ModelError(
                    f"the models changed on disk since the worker started ({self.version} -> "
                    f"{version}): restart the worker to score with them (or let it reload "
                    "them: model_reload_s)"
                )
            except ModelError as exc:
                log.error("%s; trying again in %.0fs", exc, delay)
            self._lock.release()  # close() may come meanwhile
            try:
                self._closed.wait(delay)
            finally:
                self._lock.acquire()
            delay = min(2 * delay, RESTART_DELAY_MAX_S)

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            os.kill(self._process.pid, signal.SIGKILL)

    def _stop(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            _end(conn, process)

    def close(self) -> None:
        """End the child; later calls are refused (nothing starts it again)."""
        self._closed.set()
        with self._lock:
            self._stop()


def _end(conn: mp.connection.Connection, process: Any, wait: float = 5.0) -> None:
    """Tell the child to go and close our end; kill a child that does not go. (Closing alone is
    not enough while the reader thread waits on the pipe: its read keeps the socket open.)"""
    try:
        conn.send(None)
    except OSError:
        pass  # gone already
    conn.close()
    if process is not None and process.pid != os.getpid():
        process.join(wait)
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # reaped meanwhile by the thread that read its end
                return
            process.join(wait)


def _died(process: Any, doing: str) -> ScorerDied:
    if process.exitcode is None:
        process.join(1.0)
    code = process.exitcode
    how = f"killed by signal {-code}" if code and code < 0 else f"exit code {code}"
    return ScorerDied(f"the scoring process died {doing} ({how})")

"""The worker's ensemble in a child process of its own (``RISKWIRE_SCORING=process``).

In the worker's own process the model shares one interpreter lock with the three stream stages:
tokenising, the lexicon members and the forward pass's Python dispatch all hold it, so a batch being
scored stalls normalising, risk and the writes, and the stages stall the model in turn (measured:
the pipeline ran at the sum of the two costs, as if on one core). In a child process the model
scores one batch while the stages work on others, each on a core of its own.

The child loads the same ensemble the worker would (``make_ensemble``), scores pickled documents
and returns pickled scores. It exits when the worker does, SIGKILL included: it watches its parent.
A child that dies is started again at the next batch; the batch it took with it is retried once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from riskwire.records import Document, Score
from riskwire.settings import Settings

log = logging.getLogger(__name__)

_scorer: Any = None  # in the child: the loaded ensemble or router


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # the worker is gone (even by SIGKILL): so is its model
            os._exit(0)
        time.sleep(0.5)


def _start(settings: Settings, parent: int, threads: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if threads:
        import torch

        torch.set_num_threads(threads)


def _load(settings: Settings) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
    global _scorer
    from models.factory import make_ensemble

    _scorer = make_ensemble(settings)
    return _scorer.version, _scorer.registry_entries()


def _score(docs: Sequence[Document]) -> list[Score]:
    from streams.pipeline import score_documents

    return score_documents(_scorer, docs)


class RemoteScorer:
    """What the worker holds instead of the ensemble: its version and registry entries, and a
    child process that scores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._restarting: asyncio.Lock | None = None
        self.version = ""
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a running worker
                initializer=_start,
                initargs=(self.settings, os.getpid(), self.settings.model_threads),
            )
        return self._pool

    def load(self) -> RemoteScorer:
        """Start the child and load the ensemble there (blocking); raises what loading raised."""
        self.version, self.entries = self._executor().submit(_load, self.settings).result()
        return self

    @property
    def pid(self) -> int | None:
        """The scoring process's id, once started."""
        processes = getattr(self._pool, "_processes", None) or {}
        return next(iter(processes), None)

    def registry_entries(self) -> list[tuple[str, str, dict[str, Any]]]:
        return self.entries

    async def score(self, docs: Sequence[Document]) -> list[Score]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return await loop.run_in_executor(pool, _score, list(docs))
            except BrokenProcessPool:
                log.error("the scoring process died (attempt %d); starting another", attempt)
                await self._restart(pool)
        raise BrokenProcessPool("the scoring process died twice on one batch")

    async def _restart(self, broken: ProcessPoolExecutor) -> None:
        """A new process for a broken one, once: two batches in flight both see it break."""
        if self._restarting is None:
            self._restarting = asyncio.Lock()
        async with self._restarting:
            if self._pool is broken:
                self.close()
                await asyncio.to_thread(self.load)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

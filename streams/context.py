"""What the agents share in one worker process: settings, topics, the database, the models, state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import faust
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from models.ensemble import Ensemble
from models.routing import Judges
from riskwire.delivery.model import delivery_targets
from riskwire.exceptions import InvalidRecord
from riskwire.records import DeadLetter, Document, Record, Score, decode_batch
from riskwire.settings import Settings
from storage.delivery import Targets
from storage.engine import make_engine, session_factory
from storage.repository import register_model_versions
from storage.stories import SharedStoryIndex
from streams.metrics import METRICS
from streams.pipeline import Deduplicator, entities, score_documents
from streams.pipeline.rules import build_risk_engine
from streams.pipeline.stories import StoryAssignment, StoryIndex
from streams.remote import RemoteScorer

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


class Positions:
    """Per partition, the offset a stage owes next: an event past it is left out, and the partition
    is sought back to it. So a stage never takes an event past one it has not taken, and (its
    acknowledgements following what it took) the commit never passes an unprocessed message.

    Events can come past the offset owed in three ways, all seen here:

    - After a rebalance Faust seeks every partition back to its committed offset, but events can
      first come from where the fetcher was: past events that were fetched, then cleared from the
      stream's buffer by the rebalance, and never processed. A stage that took those would run
      ahead of what it processed: scoring and normalise would send watermarks vouching for
      documents they never sent, and the risk stage would release scores before earlier ones it
      had dropped, out of event-time order (the crash test's rebalance caught both). After a
      rebalance a partition owes its committed offset, where Faust starts it (or an earlier one:
      the one after the last event taken, or, for the risk stage, the first score it dropped on a
      revoke, ``rewind``; see ``rebalanced``).
    - Between a revoke and the next assignment (seconds, on the embedded broker) events already in
      the batch buffer still come, stamped with the old generation. Nothing of a revoked partition
      is taken then (``revoke``): a risk stage that had just dropped its held scores would release
      the later ones it was handed, past the dropped ones, and store their rows first (the
      two-worker crash test caught it: an hour of a group's rows computed without the hour before).
    - Faust's fetcher drops a record below the last one it delivered, which a seek can leave behind
      (``streams.transport._Consumer``): a hole in what a partition delivers is sought back too.
    """

    def __init__(self) -> None:
        self.next: dict[Any, int] = {}  # tp -> the offset owed next
        self.assigned: set[Any] = set()  # the partitions of the current generation
        self.revoked: set[Any] = set()  # given up in the rebalance under way
        self.sought: dict[Any, float] = {}

    def rebalanced(self, assigned: set[Any], committed: Mapping[Any, int | None]) -> None:
        """A new generation: ``committed`` holds the offsets Faust starts partitions from.

        Each partition owes its committed offset, or, if this stage owes an earlier one, that.
        Not the later offset a kept partition owed before: the revoke dropped the acknowledgements
        of the offsets between, uncommitted, so Faust's commit of the partition would wait for
        them forever (``streams.transport._Consumer``); they are taken again, and their writes are
        idempotent."""
        kept = self.assigned & assigned
        own = {tp: o for tp, o in self.next.items() if tp in kept}
        self.next = {}
        for tp in assigned:
            start = committed.get(tp)
            if start is not None and start >= 0:  # none, -1: the partition has no commit yet
                self.next[tp] = min(start, own.get(tp, start))
            elif tp in own:
                self.next[tp] = own[tp]
        self.assigned = set(assigned)
        self.revoked.clear()
        self.sought.clear()

    def revoke(self, tps: Iterable[Any]) -> None:
        """A rebalance has begun: until the next generation, nothing of these is taken."""
        self.revoked.update(tps)

    def rewind(self, tp: Any, offset: int) -> None:
        """Owe ``offset`` again (an event from there on was dropped, not processed)."""
        self.next[tp] = min(self.next.get(tp, offset), offset)

    def accept(self, tp: Any, offset: int) -> bool:
        if tp in self.revoked:
            return False  # not ours since the revoke: whoever gets it reads it again
        owed = self.next.get(tp)
        if owed is not None and offset > owed:
            return False  # past one not taken yet: it comes again after the seek
        self.next[tp] = offset + 1  # at or before: a repeat after a seek back, taken again
        return True

    def seek_due(self, tp: Any) -> int | None:
        """The offset to seek ``tp`` to, at most every few seconds while it is out of step."""
        now = time.monotonic()
        if tp in self.revoked or tp not in self.next or now - self.sought.get(tp, 0.0) < 5.0:
            return None
        self.sought[tp] = now
        return self.next[tp]


async def event_batches(
    stream: faust.StreamT[bytes], settings: Settings, positions: Positions | None = None,
    most: int | None = None,
) -> AsyncIterator[Sequence[Any]]:  # fmt: skip
    """Micro-batches of up to ``most`` events (default ``score_batch_size``): key, value and
    message, acknowledged once the loop body has run to its end; a body that raises or is
    cancelled (a worker stopping) leaves its batch unacknowledged, to be read again.

    Events fetched before a rebalance can still sit in the batch buffer afterwards. They are left
    out and never acknowledged: Faust seeks to the committed offsets after a rebalance, so they come
    again; acknowledged, they could let the commit pass the offsets before them, and those would
    be lost. Events past the offset a partition owes (from where the fetcher was, after a
    rebalance, or after a hole) are left out too, and the partition sought back (``Positions``).
    """
    concrete = cast(faust.Stream[bytes], stream)  # take_events is missing from faust's StreamT
    app = concrete.app
    positions = positions if positions is not None else Positions()

    async def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        positions.revoke(args[0] if args else kwargs.get("revoked", ()))

    async def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        positions.revoked.clear()  # the new generation's events are told apart by their stamp

    # faust types receivers as plain callables of (sender, *args, signal=...): these are such
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    try:
        async for events in _batches(concrete, app, settings, positions, most):
            yield events
    finally:
        app.on_partitions_revoked.disconnect(on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.disconnect(on_assigned)  # type: ignore[arg-type]


async def _batches(
    concrete: faust.Stream[bytes], app: Any, settings: Settings, positions: Positions,
    most: int | None,
) -> AsyncIterator[Sequence[Any]]:  # fmt: skip
    generation = None
    async for events in concrete.take_events(
        most or settings.score_batch_size, settings.score_batch_wait_s
    ):
        if app.consumer_generation_id != generation:
            generation = app.consumer_generation_id
            # Faust's committed offsets (its own, updated as it commits): where it starts each
            # partition of the new generation
            positions.rebalanced(set(app.consumer.assignment()), app.consumer._committed_offset)
        current = []
        stale: dict[Any, int] = {}
        for event in events:
            fetched = event.message.generation_id
            if fetched is not None and fetched != generation:
                event.message.incref()  # the batch's acknowledgement will not finish it
            elif not positions.accept(event.message.tp, event.message.offset):
                event.message.incref()
                if event.message.tp not in positions.revoked:
                    stale[event.message.tp] = event.message.offset
            else:
                current.append(event)
        for tp, offset in stale.items():
            owed = positions.seek_due(tp)
            if owed is not None:
                log.warning(
                    "%s: events from offset %d, but %d is owed (not taken yet): seeking back",
                    tp,
                    offset,
                    owed,
                )
                await app.consumer.seek(tp, owed)
        if current:
            METRICS.took(current)
            # Faust's take() acknowledges a batch however the loop body left it: a body cancelled
            # by a stopping worker (or failed) would have its offsets committed unprocessed. So
            # each event is held here too, and let go only when the body asks for the next batch
            for event in current:
                event.message.incref()
            yield current
            for event in current:
                event.ack()


R = TypeVar("R", bound=Record)


def decode_events(
    events: Sequence[Any], record_type: type[R], stage: str, now: datetime
) -> tuple[list[R], list[DeadLetter]]:
    """Decode each event's value; what does not decode becomes a dead letter with the reason."""
    pairs, dead = decode_pairs(events, record_type, stage, now)
    return [r for _, r in pairs], dead


def decode_pairs(
    events: Sequence[Any], record_type: type[R], stage: str, now: datetime,
    batch: str | None = None,
) -> tuple[list[tuple[Any, R]], list[DeadLetter]]:  # fmt: skip
    """As ``decode_events``, each record with the event it came in. With ``batch``, a message may
    also hold several records, a batch of that schema (``decode_batch``): a bad record of a batch
    is dead-lettered alone."""
    records: list[tuple[Any, R]] = []
    dead: list[DeadLetter] = []
    for event in events:
        invalid: list[tuple[str, bytes]] = []  # (reason, the record's JSON)
        try:
            if batch is None:
                found = [record_type.from_json(event.value)]
            else:
                found, invalid = decode_batch(event.value, record_type, batch)
        except InvalidRecord as exc:
            found, invalid = [], [(str(exc), event.value)]
        records += [(event, r) for r in found]
        dead += [
            DeadLetter.of(stage, reason, payload, occurred_at=now, topic=event.message.topic,
                          key=event.key)
            for reason, payload in invalid
        ]  # fmt: skip
    return records, dead


async def send_dead(topic: faust.TopicT, letters: Sequence[DeadLetter]) -> None:
    """Produce dead letters keyed by the original message's key."""
    METRICS.dead(letters)
    for letter in letters:
        await topic.send(key=letter.key.encode() if letter.key else None, value=letter.to_json())


def storage_refused(exc: Exception, payload: bytes, key: str | None, now: datetime) -> DeadLetter:
    return DeadLetter.of("persist", f"storage refused: {exc}", payload, key=key, occurred_at=now)


class WorkerContext:
    def __init__(self, settings: Settings, ensemble_factory: Callable[[], Ensemble] | None = None):
        self.settings = settings
        self.topics = settings.topics
        # no ping before each transaction (a round trip, and server work, per write): every
        # transaction goes through ``_transact``, which retries a connection found dead
        # a transaction left open past ``database_idle_transaction_s`` (this worker paused, or
        # gone) is ended by PostgreSQL, and its locks on the fence rows with it: the worker that
        # took its partitions over waits that long at most. Were this one to wake, ``_transact``
        # finds the connection ended and starts again, and the fence check refuses it.
        self.engine = make_engine(
            settings.resolved_database_url,
            idle_transaction_s=settings.database_idle_transaction_s,
            pool_pre_ping=False,
        )
        self.sessions = session_factory(self.engine)
        self.dedupe = Deduplicator(settings.dedupe_cache_size)
        self.stories = SharedStoryIndex()  # in the database: shared by every worker
        self.local_stories: StoryIndex | None = None  # or in this worker (``story_index``)
        if settings.story_index == "memory" or (
            settings.story_index == "auto"
            and not settings.resolved_database_url.startswith("postgresql")
        ):
            self.local_stories = StoryIndex()
        self.risk = build_risk_engine(settings, sessions=self.sessions)  # ticker groups
        self.group_risk = build_risk_engine(settings, sessions=self.sessions)  # sectors, market
        entities.configure(settings.companies_file)  # normalise links with this table
        self.targets: Targets = delivery_targets(settings)
        self._ensemble_factory = ensemble_factory
        self._ensemble: Judges | None = None
        self._remote: RemoteScorer | None = None  # the ensemble, when it is in a process of its own
        self._ensemble_lock = asyncio.Lock()
        self._files: tuple[Any, ...] | None = None  # the scorer's files when it was built
        self._registered: str | None = None  # the version last recorded in model_versions

    @property
    def scoring_depth(self) -> int:
        """Batches the scoring stage keeps in flight: as many as score at once, and one more
        being written and sent on."""
        return (self._remote.threads if self._remote is not None else 1) + 1

    @property
    def ensemble_loaded(self) -> bool:
        return self._ensemble is not None

    def load_ensemble(self) -> Judges:
        """Build the ensemble now (before the worker starts), instead of at the first batch."""
        if self._ensemble is None:
            started = time.perf_counter()
            self._ensemble = self._build_ensemble()
            log.info(
                "ensemble %s ready in %.1fs", self._ensemble.version, time.perf_counter() - started
            )
        return self._ensemble

    async def ensemble(self) -> Judges:
        async with self._ensemble_lock:
            return await asyncio.to_thread(self.load_ensemble)

    async def score(self, docs: Sequence[Document]) -> list[Score]:
        """Fused scores of a batch, in its order, from the scoring process (or scored in a
        thread, without one), waited for in a thread: the event loop goes on."""
        ensemble = await self.ensemble()
        with METRICS.score_seconds.time():
            return await asyncio.to_thread(score_documents, ensemble, docs)

    async def reload_models(self) -> str | None:
        """When the configured ensemble or routing file, or a member's own files, changed since
        the models were built (a refit promoted, a file replaced, a member retrained), build them
        again beside the ones scoring and score with them from the next batch if their version
        differs. Returns the new version, or None. Models that cannot load are logged and the
        running ones go on."""
        from models.factory import make_ensemble, scorer_files

        if self._ensemble is None or self._ensemble_factory is not None:
            return None
        files = await asyncio.to_thread(scorer_files, self.settings)
        remote = self._remote
        changed = files != self._files
        if not changed and (remote is None or remote.version == self._registered):
            return None  # (a child started again after a death may have found new models)
        self._files = files
        old = self._registered
        fresh: Judges = self._ensemble
        try:
            if changed and remote is not None:
                await asyncio.to_thread(remote.reload)
            elif changed:
                fresh = await asyncio.to_thread(make_ensemble, self.settings)
        except Exception as exc:
            log.error("the changed models cannot load (%s); scoring on with %s", exc, old)
            return None
        if fresh.version == self._registered:
            return None
        async with self._ensemble_lock:
            self._ensemble = fresh
        await asyncio.to_thread(self._register, fresh)
        METRICS.model_reloads.inc()
        log.info("now scoring with %s (was %s)", fresh.version, old)
        return fresh.version

    def _register(self, ensemble: Judges) -> None:
        entries = ensemble.registry_entries()
        now = datetime.now(UTC)
        self._transact(entries, lambda session, items: register_model_versions(session, items, now))
        self._registered = ensemble.version

    def _build_ensemble(self) -> Judges:
        from models.factory import make_ensemble, scorer_files

        ensemble: Judges
        if self._ensemble_factory is None:
            self._files = scorer_files(self.settings)
        if self._ensemble_factory is None and self.settings.scoring_process:
            from riskwire.worker import scoring_threads, worker_cores

            batches, threads = scoring_threads(self.settings, worker_cores())
            ensemble = self._remote = RemoteScorer(self.settings, batches, threads)
        else:
            ensemble = make_ensemble(self.settings, self._ensemble_factory)
        METRICS.probes.add(
            "riskwire_model_info", "gauge", "The ensemble (or router) version this worker scores "
            "with: 1", ["version"], lambda: [(((self._ensemble or ensemble).version,), 1.0)],
        )  # fmt: skip
        remote = self._remote
        if remote is not None:
            METRICS.probes.add(
                "riskwire_scoring_process_restarts", "counter", "Times the scoring process was "
                "started again after it died", [], lambda: [((), float(remote.restarts))],
            )  # fmt: skip
        self._register(ensemble)
        return ensemble

    async def write(
        self, items: Sequence[T], write: Callable[[Session, Sequence[T]], None]
    ) -> list[tuple[T, SQLAlchemyError]]:
        """Write items in one transaction; returns the items the database refused, with why.

        A database that is down or unreachable is waited for, with backoff: the batch is not
        acknowledged meanwhile, so nothing is lost (backpressure). An item the database refuses on
        its own merits (a constraint or data error) is isolated, for the caller to dead-letter.
        """
        return await asyncio.to_thread(self._write_sync, items, write)

    def _write_sync(
        self, items: Sequence[T], write: Callable[[Session, Sequence[T]], None]
    ) -> list[tuple[T, SQLAlchemyError]]:
        if not items:
            return []
        try:
            self._transact(items, write)
            return []
        except SQLAlchemyError as exc:
            if len(items) == 1:
                return [(items[0], exc)]
        return [refused for item in items for refused in self._write_sync([item], write)]

    async def assign_stories(self, docs: Sequence[Document]) -> list[StoryAssignment]:
        """Each document's story, from the shared index (waiting out an unavailable database).
        Should the index fail otherwise, each document stands alone: never lost for its story."""
        local = self.local_stories
        if local is not None:
            return local.assign_batch(docs)
        result: list[StoryAssignment] = []

        def work(session: Session, batch: Sequence[Document]) -> None:
            result[:] = self.stories.assign(session, batch)  # a retry starts over

        try:
            await asyncio.to_thread(self._transact, docs, work)
        except Exception:
            log.exception("the story index failed on %d documents; each stands alone", len(docs))
            return [StoryAssignment(d.id, 1.0, 0, 1.0) for d in docs]
        return result

    def transact(self, items: Sequence[T], work: Callable[[Session, Sequence[T]], None]) -> None:
        """Run ``work`` in one transaction, waiting out an unavailable database (blocking)."""
        self._transact(items, work)

    def _transact(self, items: Sequence[T], write: Callable[[Session, Sequence[T]], None]) -> None:
        attempt = 0
        started = time.perf_counter()
        try:
            while True:
                try:
                    with self.sessions.begin() as session:
                        write(session, items)
                    return
                except DBAPIError as exc:
                    if not _transient(exc):
                        raise
                    if _reconnect_after(exc):
                        self.engine.dispose()  # pooled connections may be to a standby now
                    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                    if not attempt:
                        METRICS.db_waiting.inc()  # until this transaction is done
                    attempt += 1
                    METRICS.db_retries.inc()
                    log.warning(
                        "database unavailable (%s); retry %d in %ss", exc.orig, attempt, delay
                    )
                    time.sleep(delay)
        finally:
            if attempt:
                METRICS.db_waiting.dec()
            METRICS.db_seconds.observe(time.perf_counter() - started)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
        self.engine.dispose()


# PostgreSQL's SQLSTATEs for a database that cannot take a write now, whatever the write: waited
# out (with backoff, the batch unacknowledged), never dead-lettered as the records' fault.
# Classes: 08 connection exception; 53 insufficient resources (disk full, out of memory, too many
# connections); 57 operator intervention (shutting down, starting up, a statement cancelled by a
# timeout); 58 system error (I/O). States: 25006 a read-only transaction (connected to a standby,
# as after a failover, or the database set read-only for maintenance); 25P03 the server ended an
# idle transaction; 40001 and 40P01 serialization failure and deadlock (run it again); 55P03 a
# lock not available within lock_timeout.
WAIT_CLASSES = ("08", "53", "57", "58")
WAIT_STATES = frozenset({"25006", "25P03", "40001", "40P01", "55P03"})
# ... of which these say nothing about the connection: retried on it. After the others the pool
# is emptied, so the retry connects afresh (a connection to a demoted primary stays read-only)
CONTENTION_STATES = frozenset({"40001", "40P01", "55P03"})
# SQLite's primary result codes for the same: busy, locked, I/O error, disk full
SQLITE_WAIT_CODES = frozenset({5, 6, 10, 13})


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _transient(exc: DBAPIError) -> bool:
    """The database cannot take the write now (down, unreachable, read-only, full, contended),
    as opposed to refusing a row on its merits (a constraint or data error)."""
    if exc.connection_invalidated:
        return True
    state = _sqlstate(exc)
    if state is not None:
        return state in WAIT_STATES or state[:2] in WAIT_CLASSES
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in SQLITE_WAIT_CODES
    text = str(exc.orig).lower()  # no code (a connection that failed before it had one)
    return any(
        s in text
        for s in (
            "database is locked",
            "connection",
            "could not connect",
            "server closed",
            "terminating",
            "timeout",
            "deadlock detected",
            "could not serialize",
        )
    )


def _reconnect_after(exc: DBAPIError) -> bool:
    """Whether a retry after ``exc`` (one to wait out) should connect afresh rather than reuse the
    pooled connections: after any PostgreSQL code but contention, whose connection is fine."""
    state = _sqlstate(exc)
    return state is not None and state not in CONTENTION_STATES and _transient(exc)

"""The story index in the database: every normalise worker reads and writes the same one.

Raw topics are keyed by each source's item id, so fifty outlets' copies of one story land on
different partitions and, with several workers, in different processes; a story index in worker
memory would make each a story of its own there, and a restarted worker would forget every story.
Here the index is three tables (``stories``, their LSH band keys, and ``story_members``: which story
each document was put in), and a batch of documents is assigned in one transaction:

1. documents already assigned (a redelivery) get their stored answer again; the rest are taken in
   event-time order;
2. the band keys of the rest find candidate stories (started within the horizon of event time);
3. each document joins its best candidate (``stories.best_match``, as the in-memory index does) or
   starts a story, which the batch's later documents can join at once;
4. copy counts are taken with one atomic ``UPDATE ... RETURNING`` for all the stories joined, so two
   workers adding copies to one story never lose a count (should their row locks deadlock, the
   database aborts one transaction, and the worker retries it).

Two workers that start the same story at the same moment (neither sees the other's uncommitted
story) still make two; the next copy joins the more similar one. Rows older than the horizon behind
the newest document seen are pruned every ``prune_every`` documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import String, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from riskwire.records import Document
from storage.repository import _insert_ignore
from storage.tables import StoryKeyRow, StoryMemberRow, StoryRow
from streams.pipeline.stories import (
    Fingerprint,
    StoryAssignment,
    StoryIndex,
    best_match,
    event_time,
)

CHUNK = 2000  # keys per IN list


def _chunks(values: list[Any], postgres: bool) -> list[list[Any]]:
    """All at once on PostgreSQL (one array parameter); else IN lists of ``CHUNK``."""
    if postgres:
        return [values] if values else []
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def _among(column: Any, values: list[Any], item: Any, postgres: bool) -> Any:
    """``column`` is one of ``values``: ``= ANY(array)`` on PostgreSQL, not thousands of
    parameters; ``IN`` elsewhere."""
    if postgres:
        return column == func.any(bindparam(f"{column.key}_set", values, ARRAY(item)))
    return column.in_(values)


@dataclass
class _Stored:
    """A candidate story, as read from the database or started by this batch."""

    story_id: str
    started: datetime
    signature: np.ndarray
    tickers: frozenset[str]
    numbers: frozenset[str]


# each document's band keys, joined to the stored ones; stories whose numbers disagree with the
# document's (neither set holds the other) left out, as ``best_match`` leaves them out. The keys
# come as (document position, key) in two integer arrays, each document's numbers once.
# Both lookups are LATERAL subqueries that cannot be flattened (OFFSET 0), so each key is one probe
# of the primary key: left to itself, the planner costs those probes as random disk reads and,
# until the index holds a few hundred thousand keys, hashes all of ``story_keys`` (and ``stories``)
# for every batch instead, a cost that grows with the index (48,000 keys: 13 ms a batch of 64
# documents against 2.3 ms probing).
_POSTGRES_CANDIDATES = text("""
    WITH pairs AS (
        SELECT DISTINCT q.i, k.story_id
        FROM unnest(CAST(:idx AS integer[]), CAST(:keys AS bigint[])) AS q(i, key)
        CROSS JOIN LATERAL (
            SELECT k.story_id FROM story_keys AS k
            WHERE k.key = q.key AND k.started_at >= :oldest OFFSET 0
        ) AS k
    )
    SELECT pairs.i, pairs.story_id
    FROM pairs
    JOIN unnest(CAST(:nums AS text[])) WITH ORDINALITY AS n(nums, o) ON n.o = pairs.i + 1
    CROSS JOIN LATERAL (
        SELECT s.numbers FROM stories AS s WHERE s.story_id = pairs.story_id OFFSET 0
    ) AS s
    WHERE string_to_array(s.numbers, ' ') <@ string_to_array(n.nums, ' ')
       OR string_to_array(n.nums, ' ') <@ string_to_array(s.numbers, ' ')
""")

# the new stories, and the band keys of those this statement inserts, as (story position, key)
# pairs: a story another worker stored first (``ON CONFLICT``) has its keys already, so the keys
# need no conflict check of their own (a speculative insert: about a third of their time)
_POSTGRES_STORIES = text("""
    WITH new AS (
        INSERT INTO stories (story_id, started_at, tickers, numbers, signature, copies)
        SELECT s.story_id, s.started_at, s.tickers, s.numbers, s.signature, 0
        FROM unnest(CAST(:ids AS text[]), CAST(:started AS timestamptz[]),
                    CAST(:tickers AS text[]), CAST(:numbers AS text[]),
                    CAST(:signatures AS text[])) AS s(story_id, started_at, tickers, numbers,
                                                      signature)
        ON CONFLICT DO NOTHING
        RETURNING story_id, started_at
    )
    INSERT INTO story_keys (key, story_id, started_at)
    SELECT q.key, new.story_id, new.started_at
    FROM unnest(CAST(:idx AS integer[]), CAST(:keys AS bigint[])) AS q(i, key)
    JOIN unnest(CAST(:ids AS text[])) WITH ORDINALITY AS p(story_id, o) ON p.o = q.i + 1
    JOIN new ON new.story_id = p.story_id
""")


def _key_arrays(keys_of: list[list[int]]) -> dict[str, str]:
    """Band keys per document (or story) as the ``idx`` and ``keys`` parameters of the statements
    above: two PostgreSQL array literals, since psycopg dumps a list element by element in Python,
    which was a fifth of the story index's time in the worker (16 keys a document)."""
    return {
        "idx": "{" + ",".join(str(i) for i, ks in enumerate(keys_of) for _ in ks) + "}",
        "keys": "{" + ",".join(str(k) for ks in keys_of for k in ks) + "}",
    }


def _array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of these strings, each quoted (for the same reason as
    ``_key_arrays``: psycopg dumps a list's strings one at a time in Python)."""
    return (
        "{"
        + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def key_id(key: bytes) -> int:
    """An LSH band key as a signed 64-bit integer: a small, fast index. Two keys that collide
    only add a candidate, which must still match on similarity, tickers and numbers."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)


def _words(values: frozenset[str]) -> str:
    return " ".join(sorted(values))


class SharedStoryIndex:
    """Assigns documents to stories kept in the database; matching is ``StoryIndex``'s (its
    hasher, bands, threshold and horizon)."""

    def __init__(self, index: StoryIndex | None = None, prune_every: int = 5000) -> None:
        self.index = index if index is not None else StoryIndex()  # (an empty one is falsy)
        self.prune_every = prune_every
        self._since_prune = 0
        self._newest: datetime | None = None
        self._cache: dict[str, _Stored] = {}  # story rows read, by id (see ``_stories``)

    def assign(self, session: Session, docs: Sequence[Document]) -> list[StoryAssignment]:
        """Each document's story, in order (see the module doc)."""
        if not docs:
            return []
        horizon = self.index.horizon
        ids = {d.id for d in docs}
        known = {  # a story's first document is its story row; its copies are members
            story_id: StoryAssignment(story_id, 1.0, 0, 1.0)
            for story_id in session.scalars(
                select(StoryRow.story_id).where(StoryRow.story_id.in_(ids))
            )
        }
        known.update(
            (m.document_id, StoryAssignment(m.story_id, 0.5**m.copy, m.copy, m.similarity))
            for m in session.scalars(
                select(StoryMemberRow).where(StoryMemberRow.document_id.in_(ids))
            )
        )
        fresh = [d for d in docs if d.id not in known]
        prints = self.index.document_fingerprints(fresh)
        band_keys_of = {
            i: list(dict.fromkeys(key_id(k) for k in fp.keys)) for i, fp in prints.items()
        }
        oldest = min((d.published_at for d in fresh), default=docs[0].published_at) - horizon
        stored = self._candidates(session, fresh, prints, band_keys_of, oldest)
        buckets: dict[int, list[_Stored]] = {}  # stories this batch starts, by band key

        # in event-time order within the batch (a batch interleaves partitions): the earliest of
        # a story's copies in it is the story's first; answers go back in the batch's order
        order = sorted(range(len(docs)), key=lambda i: event_time(docs[i]))
        docs = [docs[i] for i in order]
        out: list[StoryAssignment | None] = []
        joins: dict[str, list[tuple[int, float]]] = {}  # story -> (position, similarity)
        new_stories: list[dict[str, Any]] = []
        new_keys: list[list[int]] = []  # each new story's band keys
        placed: dict[str, int] = {}  # a document twice in one batch: its first position
        for doc in docs:
            if doc.id in known:
                out.append(known[doc.id])
                continue
            if doc.id in placed:
                out.append(None)  # filled in below, from its first position
                continue
            placed[doc.id] = len(out)
            fp = prints[doc.id]
            since = doc.published_at - horizon
            band_keys = band_keys_of[doc.id]
            candidates = [s for s in stored.get(doc.id, ()) if s.started >= since]
            candidates += {id(s): s for k in band_keys for s in buckets.get(k, ())}.values()
            best, similarity = best_match(candidates, fp)
            if best is not None and similarity >= self.index.threshold:
                joins.setdefault(best.story_id, []).append((len(out), similarity))
                out.append(None)
                continue
            story = _Stored(doc.id, doc.published_at, fp.signature, fp.names, fp.numbers)
            for k in band_keys:
                buckets.setdefault(k, []).append(story)
            new_stories.append({
                "story_id": doc.id, "started_at": doc.published_at, "tickers": _words(fp.names),
                "numbers": _words(fp.numbers), "signature": fp.signature.tobytes().hex(),
                "copies": 0,
            })  # fmt: skip
            new_keys.append(band_keys)
            out.append(StoryAssignment(doc.id, 1.0, 0, 1.0))
        self._store_stories(session, new_stories, new_keys)

        started = {s["story_id"]: s["started_at"] for s in new_stories}
        counted: dict[str, tuple[int, datetime]] = {}
        if joins:  # one atomic increment for every story the batch joined
            joined_ids = sorted(joins)
            added = case({i: len(joins[i]) for i in joined_ids}, value=StoryRow.story_id, else_=0)
            counted = {
                story_id: (copies, first)
                for story_id, copies, first in session.execute(
                    update(StoryRow)
                    .where(StoryRow.story_id.in_(joined_ids))
                    .values(copies=StoryRow.copies + added)
                    .returning(StoryRow.story_id, StoryRow.copies, StoryRow.started_at)
                ).tuples()
            }
        for story_id, joined in joins.items():
            # a story another worker pruned meanwhile: its copies are numbered from 1 again
            total, first = counted.get(story_id, (len(joined), None))
            if first is not None:
                started.setdefault(story_id, first)
            for n, (position, similarity) in enumerate(joined, start=total - len(joined) + 1):
                out[position] = StoryAssignment(story_id, 0.5**n, n, similarity)
        result = [a if a is not None else out[placed[d.id]] for d, a in zip(docs, out, strict=True)]
        members = {}
        for doc in fresh:
            a = result[placed[doc.id]]
            assert a is not None
            if not a.copy:
                continue  # its story row says it
            members[doc.id] = {
                "document_id": doc.id, "story_id": a.story_id, "copy": a.copy,
                "similarity": a.similarity, "started_at": started.get(a.story_id, doc.published_at),
            }  # fmt: skip
        _insert_ignore(session, StoryMemberRow, list(members.values()))
        self._prune(session, docs)
        answers: list[StoryAssignment | None] = [None] * len(docs)
        for position, i in enumerate(order):
            answers[i] = result[position]
        return [a for a in answers if a is not None]  # every one is set by now

    @staticmethod
    def _store_stories(
        session: Session, stories: list[dict[str, Any]], keys: list[list[int]]
    ) -> None:
        """The new stories and their band keys: on PostgreSQL one statement; elsewhere the
        stories, then every key of theirs, each ignored if stored already."""
        if not stories:
            return
        if session.connection().dialect.name == "postgresql":
            session.execute(_POSTGRES_STORIES, _key_arrays(keys) | {
                "ids": _array(s["story_id"] for s in stories),
                "started": _array(s["started_at"].isoformat() for s in stories),
                "tickers": _array(s["tickers"] for s in stories),
                "numbers": _array(s["numbers"] for s in stories),
                "signatures": _array(s["signature"] for s in stories),
            })  # fmt: skip
            return
        _insert_ignore(session, StoryRow, stories)
        rows = [
            {"key": k, "story_id": s["story_id"], "started_at": s["started_at"]}
            for s, ks in zip(stories, keys, strict=True)
            for k in ks
        ]
        _insert_ignore(session, StoryKeyRow, rows)

    def _candidates(
        self, session: Session, fresh: Sequence[Document], prints: dict[str, Fingerprint],
        band_keys_of: dict[str, list[int]], oldest: datetime,
    ) -> dict[str, list[_Stored]]:  # fmt: skip
        """Per document, the stored stories that share one of its band keys and started after
        ``oldest``, each once. On PostgreSQL the database joins each document's keys itself and
        leaves out stories whose numbers disagree with the document's (``best_match`` would pass
        them over anyway): templated headlines share most band keys but not their figures, and
        fetching every (key, story) pair of a batch, then walking them, was most of the index's
        time there. Elsewhere, the pairs of all the batch's keys, as before."""
        if not fresh:
            return {}
        by_index: list[tuple[int, str]] = []
        if session.connection().dialect.name == "postgresql":
            keys_of = [band_keys_of[doc.id] for doc in fresh]
            by_index = list(session.execute(_POSTGRES_CANDIDATES, _key_arrays(keys_of) | {
                "nums": _array(_words(prints[doc.id].numbers) for doc in fresh), "oldest": oldest,
            }).tuples())  # fmt: skip
        else:
            pairs: list[tuple[int, str]] = []
            for chunk in _chunks(sorted({k for ks in band_keys_of.values() for k in ks}), False):
                pairs += session.execute(
                    select(StoryKeyRow.key, StoryKeyRow.story_id).where(
                        StoryKeyRow.key.in_(chunk), StoryKeyRow.started_at >= oldest
                    )
                ).tuples()
            by_key: dict[int, list[str]] = {}
            for key, story_id in pairs:
                by_key.setdefault(key, []).append(story_id)
            for i, doc in enumerate(fresh):
                ids = {sid for k in band_keys_of[doc.id] for sid in by_key.get(k, ())}
                by_index += [(i, sid) for sid in sorted(ids)]
        stories = self._stories(session, sorted({sid for _, sid in by_index}))
        out: dict[str, list[_Stored]] = {}
        for i, story_id in by_index:
            story = stories.get(story_id)
            if story is not None:  # (a story pruned between the two reads is gone)
                out.setdefault(fresh[i].id, []).append(story)
        return out

    def _stories(self, session: Session, story_ids: list[str]) -> dict[str, _Stored]:
        """The stories' rows, read once per worker: what matching reads of a story (its start,
        signature, tickers and numbers) never changes once it is stored."""
        cache = self._cache
        missing = [sid for sid in story_ids if sid not in cache]
        postgres = session.connection().dialect.name == "postgresql"
        for chunk in _chunks(missing, postgres):
            rows = session.execute(
                select(StoryRow.story_id, StoryRow.started_at, StoryRow.signature,
                       StoryRow.tickers, StoryRow.numbers)
                .where(_among(StoryRow.story_id, chunk, String(), postgres))
            )  # fmt: skip
            for story_id, started_at, signature, tickers, numbers in rows.tuples():
                cache[story_id] = _Stored(
                    story_id, started_at,
                    np.frombuffer(bytes.fromhex(signature), dtype=np.uint64),
                    frozenset(tickers.split()), frozenset(numbers.split()),
                )  # fmt: skip
        return {sid: cache[sid] for sid in story_ids if sid in cache}

    def _prune(self, session: Session, docs: Sequence[Document]) -> None:
        newest = max(d.published_at for d in docs)
        if self._newest is None or newest > self._newest:
            self._newest = newest
        self._since_prune += len(docs)
        if self._since_prune < self.prune_every:
            return
        self._since_prune = 0
        cut = self._newest - self.index.horizon
        self._cache = {k: v for k, v in self._cache.items() if v.started >= cut}
        for table in (StoryMemberRow, StoryKeyRow, StoryRow):
            session.execute(delete(table).where(table.started_at < cut))

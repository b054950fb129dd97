"""Near-duplicate documents clustered into stories (MinHash over character shingles, banded LSH), and
a novelty score: the first document of a story is 1, each later copy half the one before.

Syndicated copies ("(Reuters) - ..."), retweets ("RT @desk: ...") and light rewrites share most of
their character 5-grams, so their MinHash signatures agree in most positions; banding (16 bands of 4
rows) makes documents whose estimated Jaccard similarity is about 0.5 or more candidates, and a
candidate joins a story when its estimate against the story's first document reaches ``threshold``,
they name a ticker in common (or neither names one), and their numbers agree (one's numbers are a
subset of the other's: a dateline may add one, but "$2 billion" is not "$4 billion").

Everything is deterministic (no process-seeded hashing), so every worker and every replay clusters
the same documents the same way. Stories are forgotten ``horizon`` of event time after they began.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import numpy as np

from riskwire.records import Document

_NOISE = re.compile(
    r"^\s*(rt\s+@\w+:?|\(\w[\w .]{0,30}\)\s*[-\u2013\u2014]|[A-Z][A-Za-z .]{0,30}\(\w+\)\s*[-\u2013\u2014])"
    r"|https?://\S+|@\w+",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[^0-9a-z$]+")
_NUMBER = re.compile(r"\d+")


def fingerprint_text(text: str) -> str:
    """What copies share: no retweet or dateline prefix, links or handles; lower-cased words."""
    return _NON_WORD.sub(" ", _NOISE.sub(" ", text).lower()).strip()


class MinHasher:
    """``permutations`` MinHash values over byte ``ngram``s (up to 8) of the fingerprint text: each
    shingle is read as an integer and hashed by multiply-shift, all vectorised, a batch of texts at
    once (numpy's per-call cost, not the arithmetic, is most of a short text's cost)."""

    CHUNK = 16_384  # shingles hashed at once: 64 permutations x 16k x 8 bytes = 8 MiB of scratch

    def __init__(self, permutations: int = 64, ngram: int = 5, seed: int = 7) -> None:
        if not 1 <= ngram <= 8:
            raise ValueError("ngram must be 1 to 8 bytes")
        rng = np.random.default_rng(seed)
        self.ngram = ngram
        self.a = rng.integers(1, 2**63, size=permutations, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=permutations, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text: the signatures of their fingerprint texts."""
        return self.hash_fingerprints([fingerprint_text(t) for t in texts])

    def hash_fingerprints(self, prints: Sequence[str]) -> np.ndarray:
        """One row per fingerprint text (``fingerprint_text``'s output): for each permutation, the
        least hash of the text's distinct shingles (a text shorter than ``ngram`` is one shingle)."""
        n = self.ngram
        datas = [p.encode() or b" " for p in prints]
        lengths = np.fromiter((len(d) for d in datas), dtype=np.int64, count=len(datas))
        buf = np.frombuffer(b"".join(datas) + bytes(n - 1), dtype=np.uint8)
        whole = len(buf) - n + 1  # shingles starting at every byte (the padding makes them whole)
        every = np.zeros(whole, dtype=np.uint64)
        for k in range(n):  # shingle i as an integer: bytes i..i+n-1, little-endian
            every |= buf[k : k + whole].astype(np.uint64) << np.uint64(8 * k)
        counts = np.maximum(lengths - n + 1, 1)  # each text's shingles (a short one: itself)
        seg = np.zeros(len(datas) + 1, dtype=np.int64)
        np.cumsum(counts, out=seg[1:])
        starts = np.zeros(len(datas), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        codes = every[np.repeat(starts - seg[:-1], counts) + np.arange(seg[-1])]
        for i in np.flatnonzero(lengths < n):  # the whole text, with no bytes of the next one
            codes[seg[i]] = int.from_bytes(datas[i], "little")
        out = np.full((len(self.a), len(datas)), np.iinfo(np.uint64).max, dtype=np.uint64)
        for lo in range(0, int(seg[-1]), self.CHUNK):
            hi = min(lo + self.CHUNK, int(seg[-1]))
            with np.errstate(over="ignore"):  # wrap-around is the hash
                mixed = self.a[:, None] * codes[None, lo:hi] + self.b[:, None]
            first = int(np.searchsorted(seg, lo, side="right")) - 1  # texts in [lo, hi)
            last = int(np.searchsorted(seg, hi, side="left"))
            least = np.minimum.reduceat(
                mixed >> np.uint64(32), np.maximum(seg[first:last], lo) - lo, axis=1
            )
            np.minimum(out[:, first:last], least, out=out[:, first:last])
        return np.ascontiguousarray(out.T)


@dataclass(frozen=True)
class StoryAssignment:
    story_id: str
    novelty: float  # 1 for the first document of a story, halved for each later copy
    copy: int  # 0 for the first document, 1 for the first copy, ...
    similarity: float  # estimated Jaccard similarity to the story's first document (1 for it)


@dataclass
class _Story:
    story_id: str
    started: datetime
    signature: np.ndarray
    keys: list[bytes]
    tickers: frozenset[str]
    numbers: frozenset[str]
    copies: int = 0
    members: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Fingerprint:
    """What story matching reads of a document (``StoryIndex.fingerprint``)."""

    names: frozenset[str]  # its tickers
    numbers: frozenset[str]  # the numbers in its text
    signature: np.ndarray
    keys: list[bytes]  # LSH band keys, one set per ticker scope


class Candidate(Protocol):
    """A story a document may join: the in-memory index's own, or one read from the database."""

    @property
    def story_id(self) -> str: ...
    @property
    def started(self) -> datetime: ...
    @property
    def signature(self) -> np.ndarray: ...
    @property
    def tickers(self) -> frozenset[str]: ...
    @property
    def numbers(self) -> frozenset[str]: ...


C = TypeVar("C", bound=Candidate)


def best_match(candidates: Iterable[C], fp: Fingerprint) -> tuple[C | None, float]:
    """The candidate most similar to the document, among those it may join (a ticker in common, or
    neither names one; numbers that agree), and the estimated similarity; between equally similar
    ones the oldest story, whatever order the candidates come in."""
    best: C | None = None
    best_similarity = 0.0
    for story in candidates:
        if story.tickers != fp.names and not fp.names & story.tickers:
            continue
        if not (fp.numbers <= story.numbers or story.numbers <= fp.numbers):
            continue  # "$2 billion" is not "$4 billion": another fact, another story
        similarity = float(np.mean(story.signature == fp.signature))
        if similarity > best_similarity or (
            best is not None
            and similarity == best_similarity
            and (story.started, story.story_id) < (best.started, best.story_id)
        ):
            best, best_similarity = story, similarity
    return best, best_similarity


class StoryIndex:
    """Assigns each document to a story (its own, or an earlier one it nearly duplicates)."""

    def __init__(
        self,
        bands: int = 16,
        rows: int = 4,
        threshold: float = 0.5,
        horizon: timedelta = timedelta(days=3),
        hasher: MinHasher | None = None,
    ) -> None:
        self.hasher = hasher or MinHasher(bands * rows)
        if len(self.hasher.a) != bands * rows:
            raise ValueError("the hasher's permutations must equal bands * rows")
        self.bands, self.rows, self.threshold, self.horizon = bands, rows, threshold, horizon
        self._buckets: dict[bytes, list[_Story]] = {}
        self._stories: deque[_Story] = deque()
        self._by_document: dict[str, StoryAssignment] = {}  # what each document was told

    def __len__(self) -> int:
        return len(self._stories)

    def _keys(self, signature: np.ndarray) -> list[bytes]:
        r = self.rows
        return [bytes([band]) + signature[band * r : (band + 1) * r].tobytes()
                for band in range(self.bands)]  # fmt: skip

    def fingerprint(self, text: str, tickers: Iterable[str] = ()) -> Fingerprint:
        """What matching needs of a document: names, numbers, MinHash signature, LSH keys."""
        return self.fingerprints([(text, tickers)])[0]

    def fingerprints(self, items: Sequence[tuple[str, Iterable[str]]]) -> list[Fingerprint]:
        """``fingerprint`` of each (text, tickers), the signatures hashed in one pass."""
        prints = [fingerprint_text(text) for text, _ in items]
        out = []
        for (_, tickers), printed, signature in zip(
            items, prints, self.hasher.hash_fingerprints(prints), strict=True
        ):
            names = frozenset(tickers)
            scopes = sorted(names) or [""]  # buckets per ticker: candidates share one
            keys = [scope.encode() + b"\x00" + key for key in self._keys(signature)
                    for scope in scopes]  # fmt: skip
            out.append(Fingerprint(names, frozenset(_NUMBER.findall(printed)), signature, keys))
        return out

    def document_fingerprints(self, docs: Iterable[Document]) -> dict[str, Fingerprint]:
        """``fingerprints`` of documents (their text and tickers), by document id."""
        unique = {d.id: d for d in docs}
        prints = self.fingerprints(
            [(d.text, [t.ticker for t in d.tickers]) for d in unique.values()]
        )
        return dict(zip(unique, prints, strict=True))

    def assign(
        self,
        document_id: str,
        text: str,
        published_at: datetime,
        tickers: Iterable[str] = (),
        fp: Fingerprint | None = None,
    ) -> StoryAssignment:
        """The document's story; the same answer again for a document seen before. A document
        joins a story only if they name a ticker in common (or neither names one): templated
        headlines ("X beats estimates") about different companies are different stories. ``fp``:
        the document's fingerprint, where the caller has it already."""
        known = self._by_document.get(document_id)
        if known is not None:
            return known
        self._forget(published_at - self.horizon)
        if fp is None:
            fp = self.fingerprint(text, tickers)
        # a similar story shares several of the document's band keys: each looked at once
        candidates = {id(s): s for key in fp.keys for s in self._buckets.get(key, ())}
        best, best_similarity = best_match(candidates.values(), fp)
        if best is not None and best_similarity >= self.threshold:
            best.copies += 1
            best.members.add(document_id)
            joined = StoryAssignment(best.story_id, 0.5**best.copies, best.copies, best_similarity)
            self._by_document[document_id] = joined
            return joined
        story = _Story(
            document_id, published_at, fp.signature, fp.keys, fp.names, fp.numbers,
            members={document_id},
        )  # fmt: skip
        for key in fp.keys:
            self._buckets.setdefault(key, []).append(story)
        self._stories.append(story)
        self._by_document[document_id] = StoryAssignment(document_id, 1.0, 0, 1.0)
        return self._by_document[document_id]

    def assign_batch(self, docs: Sequence[Document]) -> list[StoryAssignment]:
        """A batch's stories, taken in event-time order (a batch interleaves partitions: the
        earliest copy in it is the story's first), answered in the batch's order."""
        prints = self.document_fingerprints(d for d in docs if d.id not in self._by_document)
        told = {
            d.id: self.assign(
                d.id, d.text, d.published_at, [t.ticker for t in d.tickers], prints.get(d.id)
            )
            for d in sorted(docs, key=event_time)
        }
        return [told[d.id] for d in docs]

    def _forget(self, before: datetime) -> None:
        while self._stories and self._stories[0].started < before:
            story = self._stories.popleft()
            for key in story.keys:
                bucket = self._buckets.get(key)
                if bucket is not None:
                    bucket.remove(story)
                    if not bucket:
                        del self._buckets[key]
            for member in story.members:
                self._by_document.pop(member, None)


def event_time(doc: Document) -> tuple[datetime, str]:
    """The order stories take documents in: event time, then id."""
    return doc.published_at, doc.id


def with_story(index: StoryIndex, doc: Document) -> Document:
    """The document with its story and novelty, from ``index`` (which learns it)."""
    story = index.assign(doc.id, doc.text, doc.published_at, [t.ticker for t in doc.tickers])
    return in_story(doc, story)


def in_story(doc: Document, story: StoryAssignment) -> Document:
    return doc.model_copy(update={"story_id": story.story_id, "novelty": story.novelty})

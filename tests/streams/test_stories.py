"""Near-duplicates cluster into stories; different news does not; novelty decays with each copy."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.pipeline.stories import MinHasher, StoryIndex, fingerprint_text

T = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ORIGINAL = "Acme Corp cuts full-year outlook as demand weakens in Europe, shares fall 8%"


@pytest.mark.parametrize(
    "copy",
    [
        "(Reuters) - " + ORIGINAL,
        "LONDON (Reuters) - " + ORIGINAL,
        "RT @marketdesk: " + ORIGINAL + " https://t.co/abc123",
        ORIGINAL.upper(),
        "Acme Corp cuts its full-year outlook as demand weakens in Europe; shares fall 8 percent",
    ],
)
def test_syndicated_copies_retweets_and_light_rewrites_join_the_story(copy: str) -> None:
    index = StoryIndex()
    index.assign("first", ORIGINAL, T, ["ACME"])
    joined = index.assign("copy", copy, T + timedelta(minutes=5), ["ACME"])
    assert joined.story_id == "first" and joined.copy == 1 and joined.novelty == 0.5
    assert joined.similarity >= 0.5


@pytest.mark.parametrize(
    ("text", "tickers"),
    [
        ("Acme Corp raises its dividend after a record quarter", ["ACME"]),  # same company
        ("Beta Corp cuts full-year outlook as demand weakens in Europe, shares fall 8%", ["BETA"]),
        ("Regulators open an inquiry into European chip supply contracts", []),
    ],
)
def test_other_news_starts_its_own_story(text: str, tickers: list[str]) -> None:
    index = StoryIndex()
    index.assign("first", ORIGINAL, T, ["ACME"])
    other = index.assign("other", text, T + timedelta(minutes=1), tickers)
    assert other.story_id == "other" and other.novelty == 1.0 and other.copy == 0
    assert len(index) == 2


def test_novelty_halves_with_each_copy_and_a_document_keeps_its_answer() -> None:
    index = StoryIndex()
    got = [index.assign(f"d{i}", f"(Wire {i}) - {ORIGINAL}", T, ["ACME"]) for i in range(4)]
    assert [a.novelty for a in got] == [1.0, 0.5, 0.25, 0.125]
    assert index.assign("d0", ORIGINAL, T, ["ACME"]).story_id == "d0"


def test_stories_are_forgotten_after_the_horizon() -> None:
    index = StoryIndex(horizon=timedelta(days=1))
    index.assign("old", ORIGINAL, T, ["ACME"])
    later = index.assign("new", ORIGINAL, T + timedelta(days=2), ["ACME"])
    assert later.story_id == "new" and len(index) == 1


def test_signatures_are_the_same_in_every_process() -> None:
    here = MinHasher().signature(ORIGINAL)
    code = (
        "from streams.pipeline.stories import MinHasher; import sys; "
        f"sys.stdout.write(MinHasher().signature({ORIGINAL!r}).tobytes().hex())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout  # fmt: skip
    assert np.array_equal(here, np.frombuffer(bytes.fromhex(there), dtype=np.uint64))


def reference_signature(hasher: MinHasher, text: str) -> np.ndarray:
    """MinHash as the definition reads: per permutation, the least hash over the set of shingles."""
    data = fingerprint_text(text).encode() or b" "
    n = min(hasher.ngram, len(data))
    shingles = {int.from_bytes(data[i : i + n], "little") for i in range(len(data) - n + 1)}
    return np.array(
        [min(((int(a) * s + int(b)) % 2**64) >> 32 for s in shingles)
         for a, b in zip(hasher.a, hasher.b, strict=True)],
        dtype=np.uint64,
    )  # fmt: skip


@pytest.mark.parametrize("chunk", [7, 64, MinHasher.CHUNK])
def test_a_batch_of_signatures_is_each_text_hashed_on_its_own(chunk: int) -> None:
    """Texts of every length, shorter than a shingle included, hashed together in chunks that cut
    texts in two: each row is that text's MinHash by the definition, whatever its neighbours."""
    hasher = MinHasher()
    hasher.CHUNK = chunk
    texts = ["", "a", "ab", "abcd", "abcde", ORIGINAL, "RT @desk: " + ORIGINAL, "$4 $4 $4",
             ORIGINAL * 3, "zz", "Acme (ACME) falls"]  # fmt: skip
    batch = hasher.signatures(texts)
    assert batch.dtype == np.uint64 and batch.shape == (len(texts), 64)
    for text, row in zip(texts, batch, strict=True):
        assert np.array_equal(row, reference_signature(hasher, text)), text
        assert np.array_equal(hasher.signature(text), row)


def test_the_fingerprint_drops_what_copies_do_not_share() -> None:
    assert fingerprint_text("RT @desk: Acme (ACME) falls! https://x.y/z") == "acme acme falls"
    assert fingerprint_text("(Reuters) - Acme falls") == "acme falls"


def test_a_syndicated_copy_carries_its_story_into_its_score() -> None:
    from models.ensemble import Ensemble
    from models.lexicon import LexiconMember
    from riskwire.records import Kind, RawRecord
    from streams.pipeline import normalise, score_documents
    from streams.pipeline.stories import with_story

    def doc(title: str, source: str):  # type: ignore[no-untyped-def]
        return normalise(
            RawRecord(source=source, kind=Kind.NEWS, fetched_at=T + timedelta(minutes=5),
                      payload={"title": title, "published_at": T.isoformat()})
        )  # fmt: skip

    index = StoryIndex()
    first = with_story(index, doc("$ACME " + ORIGINAL, "wire-a"))
    copy = with_story(index, doc("(Reuters) - $ACME " + ORIGINAL, "wire-b"))
    assert (first.story_id, first.novelty) == (first.id, 1.0)
    assert (copy.story_id, copy.novelty) == (first.id, 0.5) and copy.id != first.id
    (score,) = score_documents(Ensemble([LexiconMember()], name="lex"), [copy])
    assert score.story_id == first.id

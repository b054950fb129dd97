from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from riskwire.exceptions import InvalidRecord
from riskwire.records import DeadLetter, Document, Kind, RawRecord, Score, stable_id
from tests.factories import make_document, make_score


def test_records_round_trip_through_versioned_json() -> None:
    doc = make_document()
    body = doc.to_json()
    assert b'"schema":"document/1"' in body
    assert Document.from_json(body) == doc
    score = make_score()
    assert Score.from_json(score.to_json()) == score
    assert json.loads(body) == {"schema": "document/1", **json.loads(doc.model_dump_json())}
    text = make_document(text='Crédit Agricole ☕ — \u2028 \\ "q"')
    assert Document.from_json(text.to_json()) == text  # UTF-8 as is, escapes where JSON needs them


def test_decoding_names_what_is_wrong() -> None:
    with pytest.raises(InvalidRecord, match="not valid JSON"):
        Document.from_json(b"{nope")
    with pytest.raises(InvalidRecord, match="expected a JSON object"):
        Document.from_json(b"[1, 2]")
    with pytest.raises(InvalidRecord, match="schema 'score/1' is not 'document/1'"):
        Document.from_json(make_score().to_json())
    with pytest.raises(InvalidRecord, match="schema None"):
        Document.from_json(b'{"id": "x"}')


def test_unknown_fields_and_naive_datetimes_are_refused() -> None:
    with pytest.raises(InvalidRecord, match="timezone-aware"):
        RawRecord.from_json(
            b'{"schema":"raw/1","source":"s","kind":"news","fetched_at":"2026-01-01T00:00:00",'
            b'"payload":{}}'
        )
    with pytest.raises(InvalidRecord, match="surprise: Extra inputs"):
        RawRecord.from_json(
            b'{"schema":"raw/1","source":"s","kind":"news","fetched_at":"2026-01-01T00:00:00Z",'
            b'"payload":{},"surprise":1}'
        )


def test_scores_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="score"):
        make_score(score=1.5)


def test_dead_letter_keeps_bytes_and_has_a_stable_id() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a = DeadLetter.of("normalise", "bad", b"\xff\xfeoops", occurred_at=now, key=b"k1")
    b = DeadLetter.of("normalise", "bad", b"\xff\xfeoops", occurred_at=now, key=b"k1")
    assert a.payload == "\\xff\\xfeoops"
    assert a.id == b.id and len(a.id) == 32
    assert DeadLetter.from_json(a.to_json()) == a


def test_stable_id_separates_parts() -> None:
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert stable_id("x") == stable_id("x")


def test_scores_travel_in_batches_and_a_bad_one_is_told_apart() -> None:
    from riskwire.records import SCORE_BATCH, decode_batch, encode_scores

    def decode_scores(data: bytes) -> tuple[list[Score], list[tuple[str, bytes]]]:
        return decode_batch(data, Score, SCORE_BATCH)

    scores = [make_score(), make_score(ticker="BOLT"), make_score(ticker="market")]
    assert decode_scores(encode_scores(scores)) == (scores, [])
    assert decode_scores(scores[0].to_json()) == ([scores[0]], [])  # one score, as before
    legacy = encode_scores(scores).replace(b'"records":', b'"scores":', 1)  # as scores/1 began
    assert decode_scores(legacy) == (scores, [])
    body = encode_scores(scores).replace(b'"ticker":"BOLT"', b'"ticker":7', 1)
    good, bad = decode_scores(body)
    assert good == [scores[0], scores[2]]
    ((reason, payload),) = bad
    assert "ticker" in reason and scores[1].document_id.encode() in payload
    with pytest.raises(InvalidRecord, match="needs a list of records"):
        decode_scores(b'{"schema":"scores/1","records":3}')
    with pytest.raises(InvalidRecord, match="not valid JSON"):
        decode_scores(b"\xff")


def test_a_dead_letter_escapes_what_no_text_column_takes() -> None:
    """NUL (PostgreSQL refuses it in text) and lone surrogates (UTF-8 cannot encode them) are
    written out as escapes in the payload, key and reason; the payload is then not exact."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    letter = DeadLetter.of("normalise", "bad \x00 \ud83d", b'{"a": "\x00"}', occurred_at=now,
                           key=b"k\x00")  # fmt: skip
    assert letter.payload == '{"a": "\\x00"}' and not letter.payload_exact
    assert letter.key == "k\\x00" and letter.reason == "bad \\x00 \\ud83d"
    assert DeadLetter.from_json(letter.to_json()) == letter
    plain = DeadLetter.of("normalise", "bad", b'{"a": 1}', occurred_at=now)
    assert plain.payload == '{"a": 1}' and plain.payload_exact


def test_a_record_with_half_an_emoji_travels_as_the_escape_it_came_as() -> None:
    raw = RawRecord(source="api", kind=Kind.SOCIAL, fetched_at=datetime(2026, 1, 1, tzinfo=UTC),
                    payload={"text": "up \ud83d", "n": [1, {"x": "\udc00"}]})  # fmt: skip
    body = raw.to_json()
    assert body.startswith(b'{"schema":"raw/1",') and b"\\ud83d" in body
    assert RawRecord.from_json(body) == raw

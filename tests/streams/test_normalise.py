from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from riskwire.exceptions import InvalidRecord
from riskwire.records import Document, Kind, RawRecord
from streams.pipeline import Deduplicator, extract_cashtags, normalise
from streams.pipeline.normalise import clean_text, storable

FETCHED = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def raw(**payload: Any) -> RawRecord:
    return RawRecord(source="wire-a", kind=Kind.NEWS, fetched_at=FETCHED, payload=payload)


def test_a_news_item_becomes_a_clean_document() -> None:
    doc = normalise(
        raw(
            title="<b>Acme</b> beats &amp; raises",
            body="<p>Shares of $ACME   rose.</p>",
            published_at="2026-11-02T10:00:00+01:00",
            url="https://x/1",
            tickers=["acme", "$BETA"],
        )
    )
    assert doc.title == "Acme beats & raises"
    assert doc.text == "Shares of $ACME rose."
    assert doc.published_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert {(t.ticker, t.relevance) for t in doc.tickers} == {("ACME", 1.0), ("BETA", 1.0)}
    assert doc.url == "https://x/1" and doc.kind == Kind.NEWS


def test_cashtags_in_the_body_are_less_relevant_than_in_the_title() -> None:
    doc = normalise(raw(title="$ACME up", text="Also $beta and $ACME", published_at=1762070400))
    # body: 0.5, +0.1 as its first mention is in the opening 200 characters
    assert [(t.ticker, t.relevance) for t in doc.tickers] == [("ACME", 1.0), ("BETA", 0.6)]


def test_cashtags_ignore_prices_and_embedded_dollars() -> None:
    assert extract_cashtags("$AAPL $100 US$5 $brk.b x$Y $$Z $GOOGL,") == ["AAPL", "BRK.B", "GOOGL"]


def test_the_id_is_stable_and_ignores_source_case_and_spacing() -> None:
    a = normalise(raw(title="Acme beats estimates", published_at="2026-11-02T10:00:00Z"))
    b = normalise(
        RawRecord(
            source="wire-b",
            kind=Kind.NEWS,
            fetched_at=FETCHED,
            payload={"title": "ACME  beats estimates ", "published_at": "2026-11-02T11:00:00Z"},
        )
    )
    c = normalise(raw(title="Acme misses estimates", published_at="2026-11-02T10:00:00Z"))
    assert a.id == b.id != c.id


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"published_at": "2026-11-02T10:00:00Z"}, "no title or text"),
        ({"title": "   <br/> "}, "no title or text"),
        ({"title": "x"}, "no published_at"),
        ({"title": "x", "published_at": "yesterday"}, "not ISO-8601"),
        ({"title": "x", "published_at": True}, "not a time"),
        ({"title": "x", "published_at": 1e20}, "out of range"),
        ({"title": "x", "published_at": "2031-01-01T00:00:00Z"}, "after fetch time"),
        (
            {"title": "x", "published_at": "2026-11-02T10:00:00Z", "tickers": "ACME"},
            "list of strings",
        ),
        (
            {"title": "x", "published_at": "2026-11-02T10:00:00Z", "tickers": ["NOT A TICKER"]},
            "not a valid symbol",
        ),
        ({"title": "x" * 100_001, "published_at": "2026-11-02T10:00:00Z"}, "longer than"),
    ],
)
def test_bad_payloads_raise_with_a_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        normalise(raw(**payload))


def test_times_without_an_offset_are_refused_and_times_with_one_become_utc() -> None:
    with pytest.raises(InvalidRecord, match="no UTC offset"):
        normalise(raw(title="x", published_at="2026-11-02 10:00:00"))
    doc = normalise(raw(title="x", published_at="2026-11-02T11:00:00+01:00"))
    assert doc.published_at == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def test_deduplicator_forgets_the_oldest_beyond_capacity() -> None:
    seen = Deduplicator(capacity=2)
    assert seen.is_new("a") and seen.is_new("a")  # not sent on yet: a batch read again keeps it
    seen.remember(["a", "b"])
    assert not seen.is_new("a")  # a is now the most recently seen
    seen.remember(["c"])  # evicts b, the least recently seen
    assert seen.is_new("b") and not seen.is_new("c") and not seen.is_new("a")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://News.Example.com/a/b?utm_source=tw&id=7&fbclid=x#comments",
         "https://news.example.com/a/b?id=7"),
        ("HTTP://example.com:80/x?b=2&a=1", "http://example.com/x?a=1&b=2"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("https://example.com", "https://example.com/"),
        ("ftp://example.com/file", None),
        ("not a url", None),
        ("http://[::1", None),
    ],
)  # fmt: skip
def test_urls_are_canonical(given: str, canonical: str | None) -> None:
    from streams.pipeline.normalise import canonical_url

    assert canonical_url(given) == canonical


def test_copies_with_tracking_parameters_share_their_url() -> None:
    a = normalise(raw(title="Acme beats", published_at="2026-11-02T10:00:00Z",
                      url="https://wire.example.com/acme?utm_campaign=x"))  # fmt: skip
    b = normalise(raw(title="Acme beats", published_at="2026-11-02T10:00:00Z",
                      url="https://WIRE.example.com/acme#top"))  # fmt: skip
    assert a.url == b.url == "https://wire.example.com/acme"


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Shares of Acme slide after the company cut its full-year outlook", "en"),
        ("Die Aktie von Siemens fällt nach der Gewinnwarnung deutlich", "de"),
        ("Le titre recule fortement après l'avertissement sur résultats", "fr"),
        ("Las acciones de la compañía caen tras la advertencia de beneficios", "es"),
        ("$ACME $BETA", "und"),  # nothing but tickers: cannot tell
    ],
)
def test_the_language_is_detected_when_the_source_does_not_say(text: str, lang: str) -> None:
    assert normalise(raw(title=text, published_at="2026-11-02T10:00:00Z")).lang == lang


def test_a_language_given_by_the_source_wins_and_is_normalised() -> None:
    doc = normalise(raw(title="Shares slide", published_at="2026-11-02T10:00:00Z", lang="en-GB"))
    assert doc.lang == "en"
    odd = normalise(raw(title="Shares of Acme slide after a profit warning",
                        published_at="2026-11-02T10:00:00Z", lang="??"))  # fmt: skip
    assert odd.lang == "en"  # not a language code: detected instead


def test_control_characters_and_half_emoji_are_cleaned_so_every_database_takes_the_text() -> None:
    """NUL (PostgreSQL refuses it in text), terminal escapes and lone UTF-16 surrogates (a JSON
    API that cut an emoji in half: ``json.loads`` keeps "\\ud83d" alone, and no encoding takes
    it) are cleaned out of what is stored; a URL holding them is no URL."""
    record = RawRecord(
        source="wire\x00a", kind=Kind.NEWS, fetched_at=FETCHED,
        payload={"title": "Acme\x00 cuts \x1b[1moutlook\x7f", "text": "Shares fall \ud83d",
                 "url": "https://example.com/a\x00b", "published_at": "2026-11-02T10:00:00Z"},
    )  # fmt: skip
    doc = normalise(RawRecord.from_json(record.to_json()))  # as it travels
    assert doc.title == "Acme cuts [1moutlook"
    assert doc.text == "Shares fall \ufffd"
    assert doc.source == "wire a" and doc.url is None
    assert Document.from_json(doc.to_json()) == doc  # and it encodes as UTF-8
    assert storable("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert clean_text("a\u0085b\u200bc") == "a b\u200bc"  # NEL is a control; a zero-width space not

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.files import CsvSource, JsonlSource, source_for
from ingest.producer import record_key
from riskwire.records import DeadLetter, Kind, RawRecord

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def test_jsonl_source_yields_records_and_dead_letters_for_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_text(
        '{"id": "a", "title": "Acme beats", "published_at": "2026-11-02T09:00:00Z"}\n'
        "\n"
        '{"id": "b", "kind": "social", "text": "$ACME up", "source": "social-x"}\n'
        "not json\n"
        "[1, 2]\n"
        '{"id": "c", "kind": "fax", "text": "x"}\n'
    )
    items = list(JsonlSource(path, Kind.NEWS, clock=lambda: NOW).read())
    records = [i for i in items if isinstance(i, RawRecord)]
    dead = [i for i in items if isinstance(i, DeadLetter)]
    assert [(r.kind, r.source, r.payload["id"]) for r in records] == [
        (Kind.NEWS, "file:feed.jsonl", "a"),
        (Kind.SOCIAL, "social-x", "b"),
    ]
    assert all(r.fetched_at == NOW for r in records)
    assert [d.reason.split(": ", 1)[0] for d in dead] == [
        "feed.jsonl:4",
        "feed.jsonl:5",
        "feed.jsonl:6",
    ]
    assert "not valid JSON" in dead[0].reason and dead[0].payload == "not json"
    assert "expected a JSON object" in dead[1].reason
    assert "kind 'fax'" in dead[2].reason


def test_csv_source_splits_tickers_and_dead_letters_bad_rows(fixtures_dir: Path) -> None:
    items = list(CsvSource(fixtures_dir / "news.csv", clock=lambda: NOW).read())
    records = [i for i in items if isinstance(i, RawRecord)]
    dead = [i for i in items if isinstance(i, DeadLetter)]
    assert [r.payload["id"] for r in records] == ["c1", "c2", "c3"]
    assert records[0].payload["tickers"] == ["ACME", "BETA"]
    assert records[2].kind == Kind.SOCIAL and "tickers" not in records[2].payload
    assert "news.csv:5: more cells than headers" in dead[0].reason
    assert "kind 'blog'" in dead[1].reason


def test_source_for_chooses_by_suffix(tmp_path: Path) -> None:
    assert isinstance(source_for(tmp_path / "a.jsonl"), JsonlSource)
    assert isinstance(source_for(tmp_path / "a.csv"), CsvSource)
    with pytest.raises(ValueError, match="unknown file type"):
        source_for(tmp_path / "a.xml")


def test_record_key_prefers_the_source_item_id() -> None:
    a = RawRecord(source="s", kind=Kind.NEWS, fetched_at=NOW, payload={"id": 7, "title": "x"})
    b = RawRecord(source="s", kind=Kind.NEWS, fetched_at=NOW, payload={"title": "x"})
    assert record_key(a) == b"s:7"
    assert record_key(b) == record_key(b) and len(record_key(b)) == 32

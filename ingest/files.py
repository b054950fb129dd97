"""File sources: JSON Lines and CSV, one item per line/row."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from ingest.base import FeedSource, SourceItem
from riskwire.records import DeadLetter, Kind, RawRecord

STAGE = "ingest"
_LIST_SPLIT = re.compile(r"[;,\s]+")


class _FileSource(FeedSource):
    def __init__(
        self, path: Path, kind: Kind = Kind.NEWS, clock: Callable[[], datetime] | None = None
    ):
        self.path = Path(path)
        self.kind = Kind(kind)
        self.name = f"file:{self.path.name}"
        self._clock = clock or (lambda: datetime.now(UTC))

    def _dead(self, where: str, reason: str, original: str) -> DeadLetter:
        """What could not be read, with the file and line it came from."""
        return DeadLetter.of(
            STAGE, f"{where}: {reason}", original, occurred_at=self._clock(), topic=self.name
        )

    def _record(self, payload: dict[str, object], original: str, where: str) -> SourceItem:
        kind = payload.get("kind", self.kind)
        if kind not in (Kind.NEWS.value, Kind.SOCIAL.value):
            return self._dead(where, f"kind {kind!r} is not news or social", original)
        source = payload.get("source")
        return RawRecord(
            source=source if isinstance(source, str) and source else self.name,
            kind=Kind(kind),
            fetched_at=self._clock(),
            payload=payload,
        )


class JsonlSource(_FileSource):
    def read(self) -> Iterator[SourceItem]:
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{self.path.name}:{number}"
                line = line.rstrip("\r\n")
                try:
                    payload = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield self._dead(where, f"not valid JSON: {exc}", line)
                    continue
                if not isinstance(payload, dict):
                    yield self._dead(where, "expected a JSON object", line)
                    continue
                yield self._record(payload, line, where)


class CsvSource(_FileSource):
    """A header row names the fields; a ``tickers`` cell may list several, split by ; , or space."""

    def read(self) -> Iterator[SourceItem]:
        with self.path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.DictReader(handle)
            for number, row in enumerate(reader, 2):
                payload: dict[str, object] = {
                    k: v for k, v in row.items() if k and v not in (None, "")
                }
                where = f"{self.path.name}:{number}"
                if None in row:
                    yield self._dead(where, "more cells than headers", json.dumps(row, default=str))
                    continue
                tickers = payload.get("tickers")
                if isinstance(tickers, str):
                    payload["tickers"] = [t for t in _LIST_SPLIT.split(tickers) if t]
                yield self._record(payload, json.dumps(row), where)


def source_for(path: Path, kind: Kind = Kind.NEWS) -> FeedSource:
    """Choose the source by file name: ``.jsonl``/``.ndjson`` or ``.csv``."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return JsonlSource(path, kind)
    if suffix == ".csv":
        return CsvSource(path, kind)
    raise ValueError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")

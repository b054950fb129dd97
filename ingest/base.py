"""The source contract: a source yields raw records, or dead letters for input it cannot read."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from riskwire.records import DeadLetter, RawRecord

SourceItem = RawRecord | DeadLetter


class FeedSource(ABC):
    """Anything that fetches items: a file, a feed, an API. ``name`` becomes the record's source."""

    name: str

    @abstractmethod
    def read(self) -> Iterator[SourceItem]:
        """Yield every item once; what cannot be read becomes a DeadLetter with the reason."""

"""Sources that produce raw records to Kafka."""

from ingest.base import FeedSource, SourceItem
from ingest.files import CsvSource, JsonlSource, source_for
from ingest.producer import RawProducer

__all__ = ["CsvSource", "FeedSource", "JsonlSource", "RawProducer", "SourceItem", "source_for"]

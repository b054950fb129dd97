"""Storage layer: SQLAlchemy 2 models, idempotent repository functions, migrations, sinks."""

from storage.engine import make_engine, session_factory
from storage.migrate import upgrade

__all__ = ["make_engine", "session_factory", "upgrade"]

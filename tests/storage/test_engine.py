"""Engine set-up: what each connection to PostgreSQL is told."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage import make_engine


@pytest.mark.integration
def test_postgresql_connections_run_without_jit_unless_the_url_says_otherwise(
    postgres_url: str,
) -> None:
    """The stream's statements are short: JIT compiling only added to them (15-27 ms for a 4 ms
    story-index lookup). A URL that names its own server options keeps them."""
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW jit")).scalar() == "off"
    engine.dispose()
    own = make_engine(f"{postgres_url}?options=-c%20jit%3Don%20-c%20work_mem%3D8MB")
    with own.connect() as conn:
        assert conn.execute(text("SHOW jit")).scalar() == "on"
        assert conn.execute(text("SHOW work_mem")).scalar() == "8MB"
    own.dispose()

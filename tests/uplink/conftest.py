"""Fixtures of the uplink tests: back-office stores (SQLite, and PostgreSQL in a database of the
test's own on the session's server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from uplink.pg import PostgresIngestStore
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestStore


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type]:
    """Build stores that share one backing database (so several workers see the same data)."""
    made: list[IngestStore] = []
    if request.param == "sqlite":
        path = tmp_path / "ingest.sqlite"

        def make() -> IngestStore:
            made.append(SqliteIngestStore(path))
            return made[-1]
    else:
        dsn = request.getfixturevalue("pg_dsn")

        def make() -> IngestStore:
            made.append(PostgresIngestStore(dsn))
            return made[-1]

    yield make  # type: ignore[misc]
    for s in made:
        s.close()

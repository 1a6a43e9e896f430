"""Fixtures of the uplink tests: back-office stores (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from uplink.pg import PostgresIngestStore
from uplink.store import IngestStore, SqliteIngestStore

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=2"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    try:
        with psycopg.connect(PG_DSN) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to reach it means: skip, not fail
        pytest.skip(f"PostgreSQL unreachable at 127.0.0.1:5432: {exc}")
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A unique schema name, dropped after the test."""
    schema = f"t_uplink_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


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
        schema = request.getfixturevalue("pg_schema")

        def make() -> IngestStore:
            made.append(PostgresIngestStore(dsn, schema=schema))
            return made[-1]

    yield make  # type: ignore[misc]
    for s in made:
        s.close()

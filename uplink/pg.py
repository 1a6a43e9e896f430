"""The PostgreSQL back-office store (psycopg 3): the same logic as SQLite, for many workers.

Each worker holds its own connection. The batches of one lane are serialised by a row lock on
the lane's row (`SELECT ... FOR UPDATE`), so two workers committing neighbouring batches of the
same lane both see each other's rows when they compute the contiguous prefix; batches of
different lanes proceed in parallel. Tables live in their own schema (default `lane_ingest`).
A broken connection is reopened on the next call; the batch that hit it is not acknowledged.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from uplink.store import Cursor, IngestStoreError, SeqConflictError, SqlIngestStore

log = logging.getLogger("lane.uplink.pg")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _schema_sql(schema: str) -> tuple[str, ...]:
    return (
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {schema}.records ("
        " record_id TEXT PRIMARY KEY, lane TEXT NOT NULL, seq BIGINT NOT NULL,"
        " ts_us BIGINT NOT NULL, kind TEXT NOT NULL, amount_minor BIGINT NOT NULL,"
        " currency TEXT NOT NULL, data BYTEA NOT NULL, ingested_us BIGINT NOT NULL,"
        " UNIQUE (lane, seq))",
        f"CREATE TABLE IF NOT EXISTS {schema}.lanes ("
        " lane TEXT PRIMARY KEY, contiguous BIGINT NOT NULL DEFAULT 0,"
        " max_seq BIGINT NOT NULL DEFAULT 0)",
    )


class PostgresIngestStore(SqlIngestStore):
    param = "%s"
    lock_suffix = " FOR UPDATE"

    def __init__(self, dsn: str, schema: str = "lane_ingest", connect_timeout: float = 5.0) -> None:
        if not _IDENT.match(schema):
            raise IngestStoreError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.records_table = f"{schema}.records"
        self.lanes_table = f"{schema}.lanes"
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    # Two workers starting together would race on CREATE IF NOT EXISTS.
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (schema,))
                    for stmt in _schema_sql(schema):
                        cur.execute(stmt)
            except psycopg.Error as exc:
                raise IngestStoreError(f"postgres schema {schema}: {exc}") from exc

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                )
            except psycopg.Error as exc:
                raise IngestStoreError(f"postgres unreachable: {exc}") from exc
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.errors.UniqueViolation as exc:
                raise SeqConflictError(f"postgres: seq held by another record id: {exc}") from exc
            except psycopg.Error as exc:
                raise IngestStoreError(f"postgres: {exc}") from exc

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        with self._transaction() as cur:
            yield cur

    def drop(self) -> None:
        """Drop the whole schema (tests and benchmarks only)."""
        with self._transaction() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

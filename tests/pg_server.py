"""A PostgreSQL for the test session: the one on 127.0.0.1:5432 when it answers, otherwise a
throwaway cluster (`initdb` into a temporary directory, `postgres` on a free port, removed at
the end), so the PostgreSQL path is never skipped. Debian's `postgresql` package provides the
binaries (`make system-deps` installs it). Set LANE_TEST_PG=throwaway to use a throwaway
cluster even when a server answers on 5432."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from sim.broker import _LIBC, PR_SET_PDEATHSIG, free_port

SHARED_DSN = "host=127.0.0.1 port=5432 user=postgres connect_timeout=2"
FORCE_ENV = "LANE_TEST_PG"


class PostgresUnavailable(RuntimeError):  # noqa: N818
    """Neither a server on 5432 nor the binaries for a throwaway cluster."""


def find_bindir() -> Path:
    """The directory of initdb/postgres: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise PostgresUnavailable(
            "no PostgreSQL on 127.0.0.1:5432 and no initdb: install Debian's `postgresql`"
            " (make system-deps)"
        )
    return versions[-1].parent


def answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _as_postgres_user(owner: pwd.struct_passwd | None) -> Callable[[], None]:
    def setup() -> None:
        # initdb and postgres refuse to run as root: drop to the `postgres` user. The death
        # signal is set after the uid change, which would clear it.
        if owner is not None:
            os.setgid(owner.pw_gid)
            os.setuid(owner.pw_uid)
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


@contextlib.contextmanager
def throwaway_cluster(timeout: float = 60.0) -> Iterator[str]:
    bindir = find_bindir()
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="lane-pg-"))
    if owner is not None:
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    data = tmp / "data"
    port = free_port()
    setup = _as_postgres_user(owner)
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"],
            check=True,
            capture_output=True,
            preexec_fn=setup,
        )
        log = (tmp / "postgres.log").open("ab")
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(tmp), *settings],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=setup,  # noqa: PLW1509
            start_new_session=True,
        )
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2"
        try:
            deadline = time.monotonic() + timeout
            while not answers(dsn):
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (tmp / "postgres.log").read_text(errors="replace")[-2000:]
                    raise PostgresUnavailable(f"throwaway postgres did not start: {text}")
                time.sleep(0.05)
            yield dsn
        finally:
            proc.send_signal(signal.SIGINT)  # fast shutdown: the data is thrown away anyway
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
    except subprocess.CalledProcessError as exc:
        raise PostgresUnavailable(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A DSN of a superuser connection to a server for this session (no dbname)."""
    if os.environ.get(FORCE_ENV) != "throwaway" and answers(SHARED_DSN + " dbname=postgres"):
        yield SHARED_DSN
        return
    with throwaway_cluster() as dsn:
        yield dsn.replace(" dbname=postgres", "")


@contextlib.contextmanager
def own_database(server_dsn: str, icu_locale: str | None = None) -> Iterator[str]:
    """A new database with a unique name, dropped (connections and all) afterwards;
    `icu_locale`: its text compared by that ICU collation (the server's own is byte order)."""
    name = f"lane_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn + " dbname=postgres", autocommit=True) as conn:
        icu = f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"
        how = "" if icu_locale is None else f" TEMPLATE template0{icu}"
        conn.execute(f"CREATE DATABASE {name}{how}")
        # A test's commit need not wait for its WAL to reach the disk (the database is thrown
        # away, the server is never crashed): a shared server with fsync on otherwise spends
        # most of a store test's time in fsync.
        conn.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
    try:
        yield f"{server_dsn} dbname={name}"
    finally:
        with psycopg.connect(server_dsn + " dbname=postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def waiting_here(dsn: str, event: str) -> int:
    """The backends of this test's database waiting for a lock of that kind (`advisory`,
    `transactionid`: a row another transaction locked)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = %s",
            (event,),
        ).fetchone()
        return int(row[0]) if row else 0

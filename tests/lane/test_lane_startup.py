"""`lane run` refuses to start on files it cannot use, with one clear line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lane.daemon import EXIT_DISK_HUNG


def _refused(conf: Path) -> str:
    """`lane run` on the config: exit 2, no traceback; its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "lane", "run", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def _refused_at_start(conf: Path) -> str:
    """The config is good, a file it names or a store is not: one clear line."""
    stderr = _refused(conf)
    assert "lane: cannot start:" in stderr
    return stderr


def test_broken_config_is_refused_with_every_problem(tmp_path: Path) -> None:
    conf = tmp_path / "lane.toml"
    conf.write_text('[lane]\nid = "no-slash"\n[broker]\nport = "x"\nwhat = 1\n')
    stderr = _refused(conf)
    assert "lane.id" in stderr
    assert "broker.port" in stderr
    assert "broker.what" in stderr


@pytest.mark.parametrize(
    ("setting", "content", "expected"),
    [
        # (A key set or deny list file that does not load starts the lane, which says why and
        # takes no offline token it cannot judge: test_lane_heal.py, test_lane_daemon.py.)
        # No last good CA to keep at start: the file the setting names, and why.
        (
            '[broker]\ntls_ca_file = "ca.pem"\n[auth]\nshare_used_tokens = false',
            None,
            "broker.tls_ca_file {}: No such file or directory",
        ),
        (
            '[broker]\ntls_ca_file = "ca.pem"\n[auth]\nshare_used_tokens = false',
            "not a CA",
            "broker.tls_ca_file {}: [X509: NO_CERTIFICATE_OR_CRL_FOUND]",
        ),
        # A lane alone (no plaza sharing: no lane key), whose tariff is read after the stores.
        (
            '[fares]\ntariff = "tariff.toml"\n[auth]\nshare_used_tokens = false',
            "currency = 'EUR'\n[toll.fares]\n1 = 2.5\n",
            "tariff",
        ),
    ],
)
def test_unusable_files_stop_the_lane_at_start(
    tmp_path: Path, setting: str, content: str | None, expected: str
) -> None:
    name = setting.split('"')[1]
    if content is not None:
        (tmp_path / name).write_text(content)
    conf = tmp_path / "lane.toml"
    conf.write_text(f'[lane]\nid = "p1/l1"\ndata_dir = "data"\n{setting}\n')
    stderr = _refused_at_start(conf)
    assert expected.format(tmp_path / name) in stderr


def test_a_metro_gate_whose_taps_store_is_not_a_database_stops_at_start(tmp_path: Path) -> None:
    """The taps store's error at start left the lane with a traceback, not the clear line
    and exit 2 of every other store."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "taps.sqlite3").write_bytes(b"not a database, " * 16)
    conf = tmp_path / "lane.toml"
    conf.write_text(
        '[lane]\nid = "S01/g1"\nmode = "transit-entry"\ndata_dir = "data"\n[metro]\nline = "L1"\n'
    )
    stderr = _refused_at_start(conf)
    assert "taps.sqlite3: cannot open: file is not a database" in stderr


def test_lane_run_s_help_names_every_exit_code() -> None:
    """Exit 3 (a data directory that does not answer) was written in docs/operations.md only:
    a supervisor's operator reading `lane run --help` learns each exit there too."""
    proc = subprocess.run(
        [sys.executable, "-m", "lane", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    codes = proc.stdout.split("exit codes:\n", 1)[1]
    said = {line.split()[0] for line in codes.splitlines() if line[:3].strip().isdigit()}
    assert said == {"0", "1", "2", str(EXIT_DISK_HUNG)}
    assert f"{EXIT_DISK_HUNG}  stopped on a data directory that does not answer" in codes

"""The top-level package names the wheel installs, and the check that they clash with nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from lane.cli import main as lane_main
from lane.doctor import probe_install
from lane.install import TOP_LEVEL, clashes

ROOT = Path(__file__).resolve().parents[2]


def other_distribution(site: Path, top_level: str) -> None:
    """A distribution 'simkit' installed in `site` that ships a top-level `top_level` too."""
    info = site / "simkit-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: simkit\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(f"{top_level}\n")
    (info / "RECORD").write_text(f"{top_level}/__init__.py,,\n")


def test_the_wheel_ships_exactly_the_top_level_names_we_check() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(TOP_LEVEL)


def test_this_environment_has_no_clash() -> None:
    assert clashes() == []
    assert probe_install().status == "OK"


def test_another_distribution_with_a_sim_package_is_reported(tmp_path: Path) -> None:
    other_distribution(tmp_path, "sim")
    sys.path.insert(0, str(tmp_path))
    try:
        found = clashes()
    finally:
        sys.path.remove(str(tmp_path))
    assert found == [
        "top-level package 'sim' is also installed by simkit: "
        "install lane in a virtual environment of its own"
    ]
    probe = probe_install({"sim": ["lane", "simkit"], "lane": ["lane"]})
    assert probe.status == "FAIL" and "'sim' is also installed by simkit" in probe.detail


def test_version_prints_the_version_and_warns_of_a_clash(tmp_path: Path) -> None:
    assert lane_main(["--version"]) == 0
    other_distribution(tmp_path, "barrier")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "lane", "--version"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.startswith("lane 0.")
    assert "'barrier' is also installed by simkit" in done.stderr

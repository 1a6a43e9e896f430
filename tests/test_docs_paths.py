"""The tests and benchmarks README.md and docs/ send a reader to exist: a test renamed or folded
into another leaves the docs citing a file nobody can run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `tests/lane/test_lane_heal.py`, `bench/road.py`, a glob (`tests/auth/test_tokens_*.py`), or a
# bare `test_trip_rules.py` (named in a table or sentence of its area's tests).
CITED = re.compile(r"(?<![\w/.-])((?:tests|bench)/[\w/*.-]+\.py|test_[\w*]+\.py)")


def cited(text: str) -> set[str]:
    return set(CITED.findall(text))


def missing(doc_text: str, root: Path) -> list[str]:
    """The cited paths (or bare test file names) no file under `root` answers."""
    names = {p.name for p in (root / "tests").rglob("test_*.py")}
    gone = []
    for path in sorted(cited(doc_text)):
        if "/" in path:
            found = any(root.glob(path))
        else:
            found = any(Path(name).match(path) for name in names)
        if not found:
            gone.append(path)
    return gone


def test_the_pattern_finds_paths_globs_and_bare_names() -> None:
    text = (
        "see `tests/lane/test_lane_heal.py`, (`bench/road.py`), `tests/auth/test_tokens_*.py`,"
        " `test_trip_rules.py` and lane/core/test_x.py, but not xtests/a.py"
    )
    assert cited(text) == {
        "tests/lane/test_lane_heal.py",
        "bench/road.py",
        "tests/auth/test_tokens_*.py",
        "test_trip_rules.py",
    }


def test_a_missing_citation_is_reported() -> None:
    text = "`tests/lane/test_lane_heal.py`, `tests/lane/test_gone.py`, `test_nowhere.py`"
    assert missing(text, ROOT) == ["test_nowhere.py", "tests/lane/test_gone.py"]


def test_every_test_and_bench_file_the_docs_cite_exists() -> None:
    gone = {doc.name: missing(doc.read_text(), ROOT) for doc in DOCS}
    assert {doc: paths for doc, paths in gone.items() if paths} == {}

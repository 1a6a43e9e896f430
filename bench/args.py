"""The command line every benchmark shares: its docstring's first line as the description and
each size option's default in `--help` (the full-size run; the test suite's smoke run passes
small sizes, tests/test_bench_smoke.py)."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

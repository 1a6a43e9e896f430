"""TOML files read into pydantic models, every problem listed as `file: key: what is wrong`.

Shared by the lane's config (`lane/config.py`) and the Modbus wiring map (`barrier/iomap.py`):
the same reading, the same error lines, one place.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M],
    data: dict[str, object],
    source: str,
    error: type[ValueError],
    hidden: Collection[str] = (),
) -> M:
    """The model, or `error` with one `source: key: problem` line per problem.

    `hidden`: location parts pydantic adds that are no key of the file (a union's tag).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if str(p) not in hidden) or "(top)"
            problems.append(f"{source}: {where}: {err['msg']}")
        raise error("\n".join(problems)) from None


def read_toml(path: Path, error: type[ValueError]) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None

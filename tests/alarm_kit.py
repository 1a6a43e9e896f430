"""The operator's alarms as the lane's shell keeps them, for tests that wire a desk or an
acquirer without a daemon: code -> text, a cleared one absent."""

from __future__ import annotations


class Alarms(dict[str, str]):
    """Called as the alarm hook (`alarm(code, text)`; text None: cleared)."""

    def __call__(self, code: str, text: str | None) -> None:
        if text is None:
            self.pop(code, None)
        else:
            self[code] = text

"""Debian's Chromium driven by Playwright, for the dashboard and console tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from polling import eventually

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_or_skip() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return pytest.importorskip("playwright.async_api", reason="pip install playwright")


@asynccontextmanager
async def browser_page(width: int, height: int) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page in a fresh headless Chromium that accepts every confirm(), and the list its
    script errors go to (a test asserts it stays empty)."""
    playwright_api = browser_or_skip()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            yield page, errors
        finally:
            await browser.close()


async def screenshot(page: Any, shot: Path, keep_as: str | Path | None) -> None:
    """The whole page into `shot` (it must show something), copied to `keep_as` when given."""
    await page.screenshot(path=str(shot), full_page=True)
    assert (await asyncio.to_thread(shot.stat)).st_size > 10_000
    if keep_as:
        await asyncio.to_thread(shutil.copyfile, shot, keep_as)


async def expect(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    await eventually(check, within=timeout, every=0.1, what=f"browser: {what}")

"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium,
driven by Playwright's sync API (README's test command installs it)."""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(name="browser")
def browser_fixture(monkeypatch):
    """A launched Chromium.  Playwright's sync API keeps an event loop in
    this thread; the test's own ORM calls are plain synchronous code between
    its calls, so Django's guard against ORM use in a coroutine is lifted
    (in this process only: the servers under test keep it)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: README's test command (./bin/test) installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield chromium
        chromium.close()

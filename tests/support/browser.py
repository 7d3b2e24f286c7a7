"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium,
driven by Playwright's sync API (README's test command installs it)."""

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.processes import wait_until

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL in software (the OHIF viewer's viewports need it; PEERS.md).
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
]


@contextmanager
def chromium_process(profile: Path):
    """Headless Chromium with its DevTools endpoint on a port of its choice;
    yields that endpoint's URL.  Started once and shared: a test connects to
    it (`connected_browser`) and opens contexts of its own."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: README's test command (./bin/test) installs Debian's chromium")
    argv = [
        str(CHROMIUM),
        "--headless",
        *BROWSER_ARGS,
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    active = profile / "DevToolsActivePort"  # Chromium writes its port there
    try:
        wait_until(lambda: active.exists() and active.read_text().strip(), 30, message="Chromium's DevTools port")
        yield f"http://127.0.0.1:{active.read_text().split()[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def connected_browser(endpoint):
    """Playwright connected to the shared Chromium.  Each `new_page()` opens
    a context of its own; closing the connection closes the contexts it
    opened, not Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(endpoint)
        try:
            yield browser
        finally:
            browser.close()

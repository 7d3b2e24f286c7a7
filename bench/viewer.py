"""Viewer time to first image: the OHIF viewer our web process serves at
/viewer/, opened by staff from the admin in Debian's headless Chromium
(Playwright, sync API), as tests/portal/test_viewer_browser.py does.

One *opening*:
1. On the admin's study list, filtered to the study (`?q=<uid>`), click
   "Open in viewer" (`a.viewer-link`, target=_blank: a new tab on
   /viewer/viewer?StudyInstanceUIDs=<uid>).  The clock starts just before
   the click (Python's wall clock, in ms).
2. The new tab polls its first cornerstone canvas every animation frame
   until more than 500 pixels are not black; the page itself notes
   `Date.now()` then, so Playwright's round trips are not counted.
3. Chromium's own timing of every request of the context that ended by
   then (`request.timing`: start and response end, ms) says when the first
   QIDO-RS, WADO-RS metadata and frame answers arrived: before the first
   QIDO-RS is OHIF's start-up (its files fetched, parsed and run).

A *cold* opening is the first in a fresh browser context (an empty HTTP
cache: Playwright's contexts are off the record); a *warm* one is the
second in the same context, after the first tab was closed (OHIF's files
cached: hashed names for a year, the rest a day; DICOMweb answers are
asked for again).  Used by bench/dicomweb.py.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field

from common import PYTHON, REPO

CHROMIUM = "/usr/bin/chromium"
# /work/shared/PEERS.md and tests/support/browser.py: WebGL in software
# (OHIF's viewports need it), nothing that reaches the network by itself.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
]
# `Date.now()` once the first cornerstone canvas shows more than 500
# pixels that are not black (2D: cornerstone copies each WebGL frame onto
# it), else false — the test's CANVAS_STATS check.
LIT_AT = """() => {
  const canvas = document.querySelector("canvas.cornerstone-canvas");
  if (!canvas || !canvas.width || !canvas.height) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length && lit <= 500; i += 4) {
    if (data[i] || data[i + 1] || data[i + 2]) lit++;
  }
  return lit > 500 ? Date.now() : false;
}"""
PIXELS_TIMEOUT_MS = 120_000
SETTLE_SECONDS = 1.0  # after a tab closes: let the server finish what it was sending


@dataclass
class Opening:
    """One click on "Open in viewer"; seconds from the click."""

    pixels: float
    first: dict[str, float] = field(default_factory=dict)  # kind -> its first answer ended (before the pixels)
    requests: dict[str, int] = field(default_factory=dict)  # kind -> requests ended by the pixels (cache hits too)


MARKS = ("qido", "metadata", "frames")  # the kinds whose first answer the summary shows


def viewer_present() -> bool:
    """The pinned OHIF is unpacked (bin/fetch-viewer), by portal's own check
    (a stdlib module: no Django needed)."""
    code = "from portal.viewer import fetch; raise SystemExit(0 if fetch.is_present() else 1)"
    return subprocess.run([PYTHON, "-c", code], cwd=REPO).returncode == 0


def kind_of(url: str) -> str:
    """The kind of one request of the viewer, by its path."""
    path = url.split("?", 1)[0]
    if "/dicomweb/" not in path:
        return "viewer file" if "/viewer/" in path else "other"
    if path.endswith("/metadata"):
        return "metadata"
    if "/frames/" in path:
        return "frames"
    if path.endswith(("/rendered", "/thumbnail")):
        return "rendered"
    if path.endswith(("/studies", "/series", "/instances")):
        return "qido"
    return "wado"


def ended_ms(request) -> float:
    """When `request` ended (epoch ms; Chromium's clock, which is the
    machine's): its start plus responseEnd, or the latest mark it has."""
    timing = request.timing
    return timing["startTime"] + max(0.0, timing.get("responseEnd", -1), timing.get("responseStart", -1))


def open_once(context, page, finished: list) -> Opening:
    """Click the study's "Open in viewer" on `page` (the admin list) and wait
    for pixels in the tab it opens; the tab is closed after."""
    finished.clear()
    clicked_ms = time.time() * 1000
    with context.expect_page() as opened:
        page.click("a.viewer-link")
    viewer = opened.value
    lit_ms = viewer.wait_for_function(LIT_AT, timeout=PIXELS_TIMEOUT_MS).json_value()
    viewer.close()
    opening = Opening(pixels=(lit_ms - clicked_ms) / 1000)
    ended = sorted((ended_ms(r), kind_of(r.url)) for r in finished if r.timing["startTime"] >= clicked_ms)
    for at, kind in ended:
        if at <= lit_ms:
            opening.requests[kind] = opening.requests.get(kind, 0) + 1
            opening.first.setdefault(kind, (at - clicked_ms) / 1000)
    return opening


def measure(base: str, study_uid: str, username: str, password: str, repeat: int = 3) -> dict:
    """`repeat` fresh browser contexts, each logged in as `username` and
    opening the study twice (cold, then warm).  Every opening, and per
    temperature the medians (seconds) of the first image and of the first
    answer of each of MARKS."""
    from playwright.sync_api import sync_playwright

    cold, warm = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            for _ in range(repeat):
                context = browser.new_context()
                finished = []
                # A lambda: Playwright's sync API cannot wrap a bound builtin.
                context.on("requestfinished", lambda request: finished.append(request))
                page = context.new_page()
                log_in(page, base, username, password)
                page.goto(f"{base}/admin/dicomnodes/study/?q={study_uid}")
                for openings in (cold, warm):
                    openings.append(open_once(context, page, finished))
                    time.sleep(SETTLE_SECONDS)
                context.close()
        finally:
            browser.close()
    median = {}
    for name, openings in (("cold", cold), ("warm", warm)):
        median[name] = {}
        for kind in MARKS:
            values = [o.first[kind] for o in openings if kind in o.first]
            median[name][f"first {kind} answer"] = statistics.median(values) if values else None
        median[name]["first image"] = statistics.median(o.pixels for o in openings)
    return {"cold": [asdict(o) for o in cold], "warm": [asdict(o) for o in warm], "median s": median}


def summary(result: dict) -> list[str]:
    """Where the time goes: one line per temperature, medians from the click."""
    lines = []
    for name, marks in result["median s"].items():
        steps = ", ".join(f"{mark} {'—' if s is None else f'{s:.2f}'}" for mark, s in marks.items())
        lines.append(f"viewer, {name} (median s from the click): {steps}")
    return lines


def log_in(page, base: str, username: str, password: str) -> None:
    """Django's admin login form: the session cookie the viewer needs."""
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")

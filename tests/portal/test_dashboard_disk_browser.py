"""The dashboard's free-space line in Chromium (portal/dashboard.py, dashboard.js):
the figure on load, and the warning once the disk guard's minimum is above it."""

import re

from dicomnodes.models import ArchiveSettings
from tests.portal.test_dashboard_browser import dashboard_page, web  # noqa: F401 (fixtures)


def test_the_header_shows_the_free_space_and_warns_when_it_runs_low(dashboard_page):  # noqa: F811
    page = dashboard_page
    assert re.fullmatch(
        r"[0-9.]+ [MG]B free of [0-9.]+ [MG]B, the minimum is [0-9.]+ [MG]B", page.inner_text("#dash-disk")
    )
    assert page.locator("#dash-disk-warning").is_hidden()

    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 2**40})

    page.wait_for_selector("#dash-disk[data-state=low]", timeout=15_000)  # measured every 5 s
    assert page.inner_text("#dash-disk-warning").startswith("Storage volume nearly full: ")
    assert page.locator("#dash-disk-warning").is_visible()

"""Debian's Chromium driven by Playwright, and axe-core's WCAG checks."""

import os
import shutil
from pathlib import Path

# Playwright's sync API keeps an event loop in the test's thread; the ORM calls the browser
# tests make there are plain sync ones.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


PASSWORD = "browser-Pass-2026!"
# Playwright's wait for an element only keeps a hung page from hanging the run: tests wait
# on what the page shows, and CI's two cores run a second test worker and Chromium beside
# the server, where a turn has been seen to take over 15 s to show its answer.
HANG_GUARD_MS = 60_000


def login(page, base, username, password):
    """Sign in, and wait until the page it leads to has loaded, its deferred scripts run.

    Before chat.js has run, Send is the plain form's button: a test that typed and clicked
    at once would post the form, not stream (it happened in CI, under load).
    """
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)  # and its load event


AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe.min.js"


RUN = """async (include) => {
  const context = include ? {include: include.map(s => [s])} : document;
  const result = await axe.run(context, {runOnly: ["wcag2a", "wcag2aa", "wcag21aa"]});
  const where = v => v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", ");
  return result.violations.map(v => v.id + ": " + where(v));
}"""


def violations(page, include: list[str] | None = None) -> list[str]:
    """axe's WCAG 2 A/AA violations on the page, or only inside the `include` selectors."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(RUN, include)


def read_when_free(query, seconds=60.0):
    """Run an ORM read from the test's thread while the in-process server may be writing:
    on SQLite's shared in-memory test database a write holds a table lock that a read
    cannot wait out (`database table is locked`), so the read is tried again until it
    goes through. PostgreSQL never refuses it."""
    from django.db import OperationalError

    from tests.e2e.harness.client import wait_for

    result = []

    def attempt():
        try:
            result.append(query())
        except OperationalError as error:
            if "locked" not in str(error):
                raise
            return False
        return True

    assert wait_for(attempt, seconds), "the database stayed locked"
    return result[0]

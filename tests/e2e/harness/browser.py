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


def login(page, base, username, password):
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


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

"""Drive Debian's headless Chromium through Playwright (the python package only: its bundled
browser download is never used, buildings' CI networks often have no internet).

Needs: `pip install playwright` and `apt-get install -y chromium` (binary at /usr/bin/chromium, or
set CHROMIUM=/path). Every request the page makes to a host other than loopback is refused and
recorded, so a test can assert the dashboard pulls nothing from a CDN.
"""
from __future__ import annotations

import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium_path() -> str:
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        raise RuntimeError(f"no Chromium at {exe}: apt-get install -y chromium (or set CHROMIUM=/path)")
    return exe


def artifact_path(name: str) -> Path:
    """A file under tests/artifacts/ (kept after the run, ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return ARTIFACTS / name


@asynccontextmanager
async def chromium_page(width: int = 1440, height: int = 1200, timezone_id: str | None = None,
                        color_scheme: str = "light"):
    """Yield a Playwright page; page.errors collects console errors and uncaught exceptions,
    page.offsite collects URLs to non-loopback hosts (all refused). timezone_id: the browser's own zone
    (default: the machine's); color_scheme: the scheme the page is told the OS prefers ("light" or "dark")."""
    from playwright.async_api import async_playwright

    exe = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS, timeout=30000)
        try:
            zone = {"timezone_id": timezone_id} if timezone_id else {}
            context = await browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme,
                                                **zone)
            page = await context.new_page()
            page.errors = []
            page.offsite = []
            page.network_changes = 0

            def console(msg):
                if msg.type != "error":
                    return
                # Chromium drops the loads in flight when an interface comes or goes on the machine (another test's
                # network namespace and veth pair, test_field_network): the machine's doing, not the page's
                if "ERR_NETWORK_CHANGED" in msg.text:
                    page.network_changes += 1
                else:
                    page.errors.append(f"console: {msg.text}")
            page.on("console", console)
            page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))

            async def guard(route):
                host = urlsplit(route.request.url).hostname or ""
                if host in LOOPBACK:
                    await route.continue_()
                else:
                    page.offsite.append(route.request.url)
                    await route.abort()

            await page.route("**/*", guard)
            yield page
        finally:
            await browser.close()

"""Drive Debian's headless Chromium through Playwright (the python package only: its bundled
browser download is never used, buildings' CI networks often have no internet).

Needs: `pip install playwright` and `apt-get install -y chromium-headless-shell` (or `chromium`, or set
CHROMIUM=/path). Every request the page makes to a host other than loopback is refused (REFUSE_PROXY) and
recorded, so a test can assert the dashboard pulls nothing from a CDN.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

ARTIFACTS = Path(__file__).with_name("artifacts")
# Every request to a host other than loopback goes to a proxy nothing listens on (loopback's requests bypass proxies:
# Chromium's own rule), so it is refused in the network stack. Intercepting every request (page.route) to refuse
# it took each of the page's requests, five refreshes a second of three each, through the driver and this process
# and back: a tenth of a dashboard test's CPU.
REFUSE_PROXY = "http://127.0.0.1:9"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--proxy-server={REFUSE_PROXY}"]
WEB_SCHEMES = {"http", "https", "ws", "wss"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


# Chromium's headless shell (Debian's chromium-headless-shell) before the full browser: the same Blink and V8
# without the browser's UI layers, it ran test_dashboard.py and test_dashboard_faults.py for 15.2 and 22.0 CPU-s
# against the full browser's 25.6 and 44.5 (the 2-core VM, December 2026), and Chromium was a third of the suite's CPU.
# The binary itself before Debian's /usr/bin wrapper, a shell that stays as its parent.
HEADLESS_SHELLS = ("/usr/lib/chromium/chromium-headless-shell", "chromium-headless-shell")


def chromium_path() -> str:
    exe = (os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, HEADLESS_SHELLS)), None)
           or shutil.which("chromium") or "/usr/bin/chromium")
    if not Path(exe).exists():
        raise RuntimeError(f"no Chromium at {exe}: apt-get install -y chromium-headless-shell (or chromium, "
                           "or set CHROMIUM=/path)")
    return exe


def artifact_path(name: str) -> Path:
    """A file under tests/artifacts/ (kept after the run, ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return ARTIFACTS / name


# A full-page screenshot cost Chromium 0.7-0.9 CPU-s (the page laid out and rastered again at its whole height,
# then back), more than half of the rest of opening a page (1.3 CPU-s), and no test reads the file: they are for a
# human look, so they are taken when asked for (KEEP_SCREENSHOTS=1), and always of a page whose test failed in it.
KEEP_SCREENSHOTS = os.environ.get("KEEP_SCREENSHOTS", "") not in ("", "0")


async def keep_screenshot(page, name: str, **options) -> None:
    """The page as tests/artifacts/NAME (options: Playwright's, e.g. full_page=True), with KEEP_SCREENSHOTS=1."""
    if KEEP_SCREENSHOTS:
        await page.screenshot(path=str(artifact_path(name)), **options)


async def _failed_screenshot(page) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "page").split(" ")[0]
    name = "failed-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in test.split("::")[-1])[:150] + ".png"
    try:    # a page whose script never returns cannot be shot: the test's own error is what matters then
        await page.screenshot(path=str(artifact_path(name)), full_page=True, timeout=5000)
    except Exception:
        pass


# the Chromium of a test module whose tests share its event loop (`one_chromium`), by that loop
_shared = {}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def one_chromium():
    """One Chromium for a module's pages, each page in a context of its own (its cookies, storage, viewport, zone
    and clock its own): starting Playwright's driver and a browser, then closing them, was a second of each test.
    The module's tests must run on the module's loop: `pytest.mark.asyncio(loop_scope="module")`."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        loop = asyncio.get_running_loop()
        _shared[loop] = shared = _Shared(pw, await _launch(pw))
        try:
            yield shared.browser
        finally:
            _shared.pop(loop, None)
            await shared.browser.close()


class _Shared:
    """A module's Chromium, started again when it has gone: a test cut short inside Playwright's call (its timeout,
    on a box at load 30) closed the connection, and every later test of the module failed on the closed browser
    ("Target page, context or browser has been closed"), 35 failures for one."""

    def __init__(self, pw, browser):
        self.pw, self.browser = pw, browser

    async def connected(self):
        if not self.browser.is_connected():
            try:
                await self.browser.close()
            except Exception:   # already gone with its connection
                pass
            self.browser = await _launch(self.pw)
        return self.browser


# a module's pytestmark for its pages in one_chromium (and its async fixtures on the module's loop too)
IN_ONE_CHROMIUM = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("one_chromium")]


async def _launch(pw):
    return await pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, timeout=30000)


# The page's own intervals of a second or more (its refresh, ?refresh= bounded below by 1 s, and its ages' tick) run
# `speedup` times as often: a test of a change the page takes up by itself waits for the page's own timer still,
# a fifth of a second instead of a second each time. The page's words ("every 1 s") and its time limits (setTimeout,
# the 8 s of a request) are its own.
SPEEDUP_JS = """(speedup) => {
  const setInterval = window.setInterval;
  window.setInterval = (fn, ms, ...args) => setInterval(fn, ms >= 1000 ? ms / speedup : ms, ...args);
}"""


# What Chromium logs for a load its gateway never answered: nothing listening (stopped), or the connection closed
# with the request in flight (stopped mid-answer: a loaded machine's refresh, a run in the tree at 5e68c55). A test that
# takes its gateway away expects these and nothing else.
GATEWAY_AWAY = ("ERR_CONNECTION_REFUSED", "ERR_EMPTY_RESPONSE", "ERR_CONNECTION_RESET")


def errors_but_gateway_away(page) -> list[str]:
    """page.errors without the loads a stopped gateway left unanswered (GATEWAY_AWAY)."""
    return [e for e in page.errors if not any(code in e for code in GATEWAY_AWAY)]


@asynccontextmanager
async def chromium_page(width: int = 1440, height: int = 1200, timezone_id: str | None = None,
                        color_scheme: str = "light", speedup: float = 1, csp: bool = False):
    """Yield a Playwright page; page.errors collects console errors and uncaught exceptions,
    page.offsite collects URLs to non-loopback hosts (all refused). timezone_id: the browser's own zone
    (default: the machine's); color_scheme: the scheme the page is told the OS prefers ("light" or "dark");
    speedup: the page's intervals of a second or more run that many times as often (SPEEDUP_JS).
    csp: the page's Content-Security-Policy applies (else bypassed: it refuses the string functions Playwright's
    wait_for_function runs in the page).
    In the module's Chromium if it has one (`one_chromium`), else in a Chromium of its own."""
    shared = _shared.get(asyncio.get_running_loop())
    if shared is not None:
        async with _page(await shared.connected(), width, height, timezone_id, color_scheme, speedup, csp) as page:
            yield page
        return
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await _launch(pw)
        try:
            async with _page(browser, width, height, timezone_id, color_scheme, speedup, csp) as page:
                yield page
        finally:
            await browser.close()


@asynccontextmanager
async def _page(browser, width, height, timezone_id, color_scheme, speedup, csp):
    zone = {"timezone_id": timezone_id} if timezone_id else {}
    context = await browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme,
                                        bypass_csp=not csp, **zone)
    try:
        if speedup != 1:
            await context.add_init_script(f"({SPEEDUP_JS})({float(speedup)!r})")
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

        def offsite(request):
            url = urlsplit(request.url)
            if url.scheme in WEB_SCHEMES and (url.hostname or "") not in LOOPBACK:
                page.offsite.append(request.url)
        page.on("request", offsite)
        try:
            yield page
        except (Exception, pytest.fail.Exception):     # pytest-timeout's too
            await _failed_screenshot(page)
            raise
    finally:
        await context.close()

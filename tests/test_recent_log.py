"""The log's last lines on the dashboard: GET /api/log and the "Recent log" card. A contractor with the dashboard
and no shell sees that the meter went silent and came back, in order, as the log says it; a flood of a peer's
garbage does not push the night's lines out; the token asked for; readable on a phone."""
from __future__ import annotations

import asyncio
import io
import sys
import json
import logging
import threading
import tracemalloc
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from browser import IN_ONE_CHROMIUM, artifact_path, chromium_page, one_chromium  # noqa: F401 - fixture
from gateway_process import START_S, GatewayProcess, write_config
from test_dashboard import QUICK, open_dashboard, server  # noqa: F401 - shared fixture
from test_gateway import lone_config
from test_http_api import SampleView, fetch
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.logs import FloodGuard, RecentLog, UtcFormatter
from ven.telemetry import TelemetryQueue

TOKEN = "log-card-s3cret-7f2a"
FAULT, END = "meter fault:", "meter answering again"
# each line of the card as [time, level, message]
CARD = """() => [...document.querySelectorAll('#log-lines li.log-line')].map((li) =>
  [...li.children].map((c) => c.textContent))"""


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"} if token else {}


async def api_log(base, query="", token=TOKEN):
    status, _, body = await fetch(f"{base}/api/log{query}", auth(token))
    assert status == 200, body
    return json.loads(body)


def first(lines, prefix):
    return next(i for i, line in enumerate(lines) if line["message"].startswith(prefix))


def on_the_modules_loop(test):
    """One Chromium for the module's pages (browser.py one_chromium), on the module's event loop, as `server` is."""
    for mark in IN_ONE_CHROMIUM:
        test = mark(test)
    return test


@on_the_modules_loop
@pytest.mark.timeout(180)
async def test_a_meter_fault_and_its_end_are_in_the_api_and_the_card_as_the_log_says_them(
        tmp_path, free_udp_port, free_tcp_port):
    http_port, meter_port = free_tcp_port(), free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), meter_port=meter_port, http_port=http_port,
                 storage=tmp_path / "gw.sqlite", ven_name="log-card", http_token=TOKEN,
                 meter_timeout_seconds=2.0)   # one fault only: a loaded machine misses shorter ones now and then
    base = f"http://127.0.0.1:{http_port}"
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as meter:
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            async def meter_read():
                try:
                    status, _, body = await fetch(base + "/api/status", auth())
                except aiohttp.ClientError:     # not listening yet
                    return False
                return status == 200 and json.loads(body)["meter"]["last_value_kw"] == 87.5
            await eventually(meter_read, START_S, "the gateway up, the meter read")
            meter.set_silent(True)
            await eventually(lambda: _said(base, FAULT, "warning"), 15, "the fault's line")
            meter.set_silent(False)
            await eventually(lambda: _said(base, END), 20, "the fault's end line")

            body = await api_log(base)
            lines = body["lines"]
            assert body["capacity"] == 500 and body["total"] == len(lines)
            fault, end = first(lines, FAULT), first(lines, END)
            assert end < fault, "newest first: the end above the start"
            assert (lines[fault]["level"], lines[end]["level"]) == ("WARNING", "INFO")
            assert lines[-1]["message"].startswith("edge-gateway ") and " starting: " in lines[-1]["message"], \
                "the oldest: the start's line"
            # each as the process's log line says it, to the second
            written = gw.log().splitlines()
            for line in lines:
                level = "" if line["level"] == "INFO" else line["level"] + " "
                assert f"{line['at']} {level}{line['message']}" in written, line
            assert [x["at"] for x in lines] == sorted((x["at"] for x in lines), reverse=True)

            warnings = (await api_log(base, "?level=warning"))["lines"]
            assert {x["level"] for x in warnings} <= {"WARNING", "ERROR", "CRITICAL"}
            assert first(warnings, FAULT) >= 0 and not [x for x in warnings if x["message"].startswith(END)]
            assert [x["message"] for x in (await api_log(base, "?limit=2"))["lines"]] == \
                [x["message"] for x in lines[:2]]

            for headers in ({}, auth("not-the-token"), {"Authorization": TOKEN}):
                status, _, text = await fetch(base + "/api/log", headers)
                assert status == 401 and "bearer token required" in text, headers
            for query in ("?level=debug", "?level=", "?limit=0", "?limit=-3", "?limit=many"):
                status, _, text = await fetch(base + "/api/log" + query, auth())
                assert status == 400 and "must be" in text, (query, text)
            # a request aiohttp cannot parse (a header over 8 KB) is logged before any token check: not its text
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            header = f"Authorization: Bearer {TOKEN}{'A' * 9000}"
            writer.write(f"GET /api/log HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.read(100), 5)).startswith(b"HTTP/1.0 400")
            writer.close()
            await eventually(lambda: _said(base, "Error handling request", "warning"), 5, "the bad request's line")
            assert TOKEN not in json.dumps(await api_log(base)), "the token is never in the lines"

            async with chromium_page(1280, 900, timezone_id="UTC") as page:
                await open_dashboard(page, f"{base}/?tz=Europe/Rome#token={TOKEN}")
                await page.wait_for_function(f"document.querySelector('#log-lines').textContent.includes('{END}')",
                                             timeout=10000)
                card = await page.evaluate(CARD)
                rome = lambda at: datetime.fromisoformat(at).astimezone(ZoneInfo("Europe/Rome")).strftime("%H:%M:%S")
                row = lambda line: [rome(line["at"]), line["level"], line["message"]]
                assert row(lines[fault]) in card and row(lines[end]) in card, card
                assert card.index(row(lines[end])) < card.index(row(lines[fault])), "newest first"
                day = datetime.fromisoformat(lines[fault]["at"]).astimezone(ZoneInfo("Europe/Rome")).date()
                assert f"{day} (Europe/Rome)" in await page.locator("#log-lines li.log-day").all_inner_texts()
                await page.locator("#log-card").screenshot(path=str(artifact_path("dashboard-log.png")))

                await page.select_option("#log-level", "warning")
                await page.wait_for_function(f"!document.querySelector('#log-lines').textContent.includes('{END}')",
                                             timeout=10000)
                card = await page.evaluate(CARD)
                assert lines[fault]["message"] in [m for _, _, m in card]
                assert {lvl for _, lvl, _ in card} <= {"WARNING", "ERROR", "CRITICAL"}
                assert "log=warning" in page.url
                assert page.errors == []
        assert gw.stop() == 0


async def _said(base, prefix, level="info"):
    return any(x["message"].startswith(prefix) for x in (await api_log(base, f"?level={level}"))["lines"])


class LogView(SampleView):
    """A day of data and a log of its own (not attached: the test writes its lines)."""

    def __init__(self, recent: RecentLog):
        super().__init__()
        self.recent = recent

    def recent_log(self, min_level, limit):
        return self.recent.body(min_level, limit)


def record(message, level=logging.INFO, name="ven.test"):
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@on_the_modules_loop
async def test_the_ring_keeps_the_newest_lines_at_its_bound_from_any_thread(server):  # noqa: F811
    recent = RecentLog(capacity=50)
    log = logging.getLogger("ven.test.ring")
    log.setLevel(logging.DEBUG)
    recent.attach()
    try:
        def write(first):
            for i in range(first, first + 40):
                log.info("line %d", i)
                log.debug("never kept: %d", i)
        threads = [threading.Thread(target=write, args=(k * 40,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        log.warning("line %d", 120)
    finally:
        recent.detach()
        log.setLevel(logging.NOTSET)
    srv = await server(LogView(recent))
    body = await api_log(srv.url, token="")
    assert (body["capacity"], body["total"], len(body["lines"])) == (50, 121, 50)
    assert body["lines"][0] == {"at": body["lines"][0]["at"], "level": "WARNING", "message": "line 120"}
    # the 50 newest of 121 lines written from three threads at once: none twice, and of each thread's lines its
    # newest, newest first
    kept = [int(x["message"].split()[1]) for x in body["lines"][1:]]
    assert len(set(kept)) == 49
    for k in range(3):
        mine = [n for n in kept if 40 * k <= n < 40 * k + 40]
        assert mine == list(range(40 * k + 39, 40 * k + 39 - len(mine), -1)), (k, mine)
    assert not [x for x in body["lines"] if "never kept" in x["message"]]
    assert [x["message"] for x in (await api_log(srv.url, "?limit=3&level=warning", token=""))["lines"]] == ["line 120"]


def test_a_flood_of_a_peers_garbage_is_one_line_as_in_the_log():
    # the stream's FloodGuard and the ring's judge each record once: what the log drops, the card drops
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(UtcFormatter())
    handler.addFilter(FloodGuard())
    recent = RecentLog(capacity=20)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    recent.attach()
    root.setLevel(logging.INFO)
    try:
        logging.getLogger("ven.test.before").warning("meter fault: no answer")
        for i in range(1000):
            logging.getLogger("bacpypes3.test").error("decoding error from %s", f"10.0.0.{i % 250}")
    finally:
        recent.detach()
        root.removeHandler(handler)
        root.setLevel(level)
    kept = [text for _, _, text in recent.lines()]
    assert kept == ["decoding error from 10.0.0.0 (repeats are counted, one line per 600 s at most)",
                    "meter fault: no answer"]
    assert [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()] == [f"WARNING {k}" for k in kept[::-1]]


def test_a_line_is_kept_as_the_log_says_it_and_cut_at_its_bound():
    recent = RecentLog(capacity=3, max_chars=100)
    recent.handle(record("event id from the VTN: a\nb\x1b[31m"))
    recent.handle(record("x" * 5000, logging.ERROR))
    assert recent.lines() == [
        (recent.lines()[0][0], logging.ERROR, "x" * 100 + "... (cut at 100 characters; the log has the whole line)"),
        (recent.lines()[1][0], logging.INFO, "event id from the VTN: a\\nb\\x1b[31m")]


def test_the_log_escapes_every_control_a_terminal_or_a_reader_acts_on_and_bounds_a_line():
    # A VTN's event id put an 8-bit CSI, NEL, a line separator and a right-to-left override raw into the log (the
    # rest of the line read reversed), and a 200,000-character id was one journal line of that length (helper sec39 H1)
    line = UtcFormatter().format(record("event \x9b31m\x85\u2028\u202eevil\u2066 received; Café – 5 kW ✓"))
    assert line.endswith(" event \\x9b31m\\x85\\u2028\\u202eevil\\u2066 received; Café – 5 kW ✓"), line
    long = UtcFormatter().format(record("event " + "x" * 200_000 + " received"))
    assert len(long) < 16_100 and long.endswith("x... (cut at 16,000 characters)"), long[-60:]
    recent = RecentLog(max_chars=100)
    recent.handle(record("y" * 200_000))
    assert recent.lines()[0][2].endswith("(cut at 100 characters; the log has its first 16,000 characters)")


def test_the_ring_at_its_bound_holds_about_a_quarter_megabyte():
    # typical lines are 90 characters (p99 250, longest seen 260): 500 of 250 characters, a bad night's worth
    recent = RecentLog()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(recent.capacity * 2):
            recent.handle(record(f"meter fault, cause changed: {i:05d} " + "r" * 214, logging.WARNING))
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert recent.total == 1000 and len(recent.lines()) == 500
    assert grown < 300_000, grown


LONG = ("VTN refused the registration: HTTP 500 from https://vtn.utility.example/OpenADR2/Simple/2.0b/EiRegisterParty/"
        + "x" * 240)


@on_the_modules_loop
async def test_the_card_on_a_phone_fits_scrolls_by_keyboard_and_moves_nothing_below(server):  # noqa: F811
    recent = RecentLog(capacity=40)
    for i in range(30):
        recent.handle(record(f"meter answering again after 2 min ({i} reads failed)"))
    recent.handle(record(LONG, logging.ERROR))
    recent.handle(record("meter fault: no answer within 5 s", logging.WARNING))
    srv = await server(LogView(recent))
    async with chromium_page(360, 800, speedup=QUICK) as page:
        held = asyncio.Event()

        async def hold(route):      # the log's first answer comes after the rest of the page is drawn
            await held.wait()
            await route.continue_()
        await page.route("**/api/log*", hold)
        await open_dashboard(page, srv.url + "/?refresh=1&tz=America/Argentina/Buenos_Aires")
        top = "(n) => n.getBoundingClientRect().top + scrollY"
        below = await page.locator("#sections").evaluate(top)
        assert await page.locator("#log").inner_text() == "loading…"
        held.set()
        await page.wait_for_function("document.querySelectorAll('#log-lines li.log-line').length === 32", timeout=10000)
        assert await page.locator("#sections").evaluate(top) == below, "the lines' coming moved the page below"
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        box = page.locator("#log")
        assert await box.evaluate("(b) => b.scrollWidth <= b.clientWidth")
        await page.locator("#log-card").screenshot(path=str(artifact_path("dashboard-log-360.png")))
        assert "32 lines, all since the gateway started" in await box.inner_text()
        # a keyboard reaches the box (the next stop after "Show") and scrolls it
        await page.locator("#log-level").focus()
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "log"
        await page.keyboard.press("PageDown")
        await eventually(lambda: box.evaluate("(b) => b.scrollTop > 0"), 5, "the box scrolled by the keyboard")
        for i in range(30):     # more lines than it keeps: the page's next refresh shows them, nothing below moves
            recent.handle(record(f"VTN answering again ({i})"))
        await page.wait_for_function("document.querySelector('#log').textContent.includes('22 older')", timeout=10000)
        assert await page.locator("#sections").evaluate(top) == below
        assert (await page.evaluate(CARD))[0][2] == "VTN answering again (29)"
        assert page.errors == []


@on_the_modules_loop
async def test_a_view_without_a_log_says_it_keeps_none(server):  # noqa: F811
    srv = await server(SampleView())
    assert await api_log(srv.url, token="") == {"capacity": 0, "total": 0, "lines": []}
    async with chromium_page(1280, 900) as page:
        await open_dashboard(page, srv.url + "/")
        await page.wait_for_function("document.querySelector('#log').textContent.includes('keeps no log lines')",
                                     timeout=10000)
        assert page.errors == []


def test_marks_that_reorder_or_hide_text_and_a_tracebacks_words_are_escaped_too():
    # LRM / RLM / ALM reorder a line's neutral runs, zero-width characters and the BOM hide text; and an ERROR's
    # traceback carried a VTN's string (in lxml's or pydantic's error) raw and unbounded past both (helper rev39 S8)
    line = UtcFormatter().format(record("id \u200e\u200f\u061c\u200b\u2060\ufeffx\xad\u180e\ufff9\U000e0041"))
    assert line.endswith(" id \\u200e\\u200f\\u061c\\u200b\\u2060\\ufeffx\\xad\\u180e\\ufff9\\U000e0041"), line
    try:
        raise ValueError("bad id CPP\n2026-12-05T09:00:00Z ADR-Event-Level 0 \u202e" + "z" * 200_000)
    except ValueError:
        err = logging.LogRecord("ven.vtn", logging.ERROR, __file__, 1, "bug in the poll", (), sys.exc_info())
    text = UtcFormatter().format(err)
    lines = text.split("\n")
    assert lines[0].endswith(" ERROR bug in the poll") and lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith("  File ") and __file__ in line for line in lines)
    last = lines[-1]
    assert last.startswith("ValueError: bad id CPP\\n2026-12-05T09:00:00Z ADR-Event-Level 0 \\u202ezzz"), last[:80]
    assert last.endswith("z... (cut at 16,000 characters)") and len(text) < 17_000


def test_what_a_restart_finds_in_storage_is_said_after_its_start_line_and_on_the_dashboard(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # After a crash with the VTN away, the backlog line came before the start's line, where it read as the killed
    # run's last words, and the dashboard's log (attached at the start) never had it, nor a damaged file's line
    config = lone_config(tmp_path, free_udp_port(), free_tcp_port(), device_id=500042)
    queue = TelemetryQueue(config.storage.path)
    queue.add(datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc), 42.0)
    queue.close()
    caplog.set_level(logging.INFO)
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    logging.getLogger().addHandler(handler)
    try:
        gateway = Gateway(config)
    finally:
        logging.getLogger().removeHandler(handler)
    try:
        said = [text for _, _, text in reversed(gateway.recent.lines())]
        assert said[0].startswith("edge-gateway ") and " starting: " in said[0], said
        assert [t for t in said if "1 telemetry reading(s) in it wait for the VTN" in t], said
        lines = written.getvalue().splitlines()
        start = next(i for i, t in enumerate(lines) if " starting: " in t)
        backlog = next(i for i, t in enumerate(lines) if "telemetry reading(s) in it wait" in t)
        assert start < backlog, lines
    finally:
        gateway.storage.close()
        gateway.telemetry.close()

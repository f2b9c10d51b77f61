"""The operator's HTTP surface: health, status, history, Prometheus metrics and a dashboard.

Read-only (GET/HEAD only) and loopback by default. Bound to any other address it requires a bearer
token (`http.token`) and refuses to start without one. The static dashboard files carry no data and
are served without the token; every data endpoint checks it. /healthz stays open so an orchestrator
can probe it; it reveals only ok/not-ok and a one-line reason.

The application is reached only through a GatewayView. docs/operator-api.md's "/api/status fields" is the reference for
what each field means; below is the shape, abridged from a running gateway, that ven/web/*.js draws (a field
the page reads that no gateway sends is a tooltip or a warning that never shows: the tests' statuses come from
a real Gateway where they can).

GET /api/status -> view.status(), a dict shaped like:

    {
      "version": "0.2.0",
      "page": "3f2a9c0d1e4b5a67",                    # added by the HTTP server: a digest of ven/web's files (page_digest)
      "uptime_seconds": 3600.0,                     # monotonic: a wall-clock step does not change it
      "now": "2026-11-22T01:00:00+00:00",            # the gateway's wall clock; times are ISO 8601 UTC strings
      "timezone": "Europe/Rome",                     # the building's zone (forecaster.timezone), the page's default
      "clock_suspect": false, "clock_behind_last_read": null, "clock_synchronized": true,
      "clock_max_error_ms": 12.5, "clock_warning": null,
      "device": {"device_id": 500001, "name": "EdgeGateway", "address": "192.168.1.20/24:47808",
                 "communication": {...}, "foreign_device": null, "twins": [...], "write_from": [...],
                 "cov_subscriptions": {"count": 16, "subscribers": [{"address": "192.168.1.9:47808", "objects": 16,
                                                                     "shortest_remaining_seconds": null}]}, ...},
      "points": {                                    # every BACnet point, keyed by name, in table order
        "meter-power": {"object": "analogValue 6", "value": 96.4, "units": "kilowatts", "access": "read-only",
                        "description": "...", "reliability": "noFaultDetected",
                        "flags": {"in_alarm": false, "fault": false, "overridden": false, "out_of_service": false}},
        "ADR-Opt-Out": {..., "texts": ["opted in", "opted out"], "priority": 8}   # commandable: the one in force
      },
      "vtn": {"connected": true, "ven_name": "...", "ven_id": "...", "registration_id": "...",
              "report_requests": [...], "fault": null, "telemetry": {"pending": 0, "dropped": 0, ...},
              "client_cert": {"file": "...", "not_after": "...", "warning": null}, ...},
      "events": [                                    # pending, active and recent (over for under a day) events
        {"event_id": "e1", "status": "active", "group": "active", "vtn_status": "far", "opt": "optIn",
         "opt_changes": [{"at": "...Z", "opt": "optIn"}], "start": "...Z", "end": "...Z", "priority": 0,
         "modification_number": 0, "drives_points": true, "sets_level": true,
         "signals": [{"name": "SIMPLE", "type": "level",
                      "intervals": [{"start": "...Z", "duration_seconds": 600.0, "payload": 2.0}]}], ...}
      ],
      "schedule": {"level": 2.0, "active": true, "start_minutes": 0.0, "opted_out": false, ...},
      "meter": {"address": "12345:2", "last_value_kw": 96.4, "last_value_at": "...", "fault": false, ...},
      "forecaster": {"model": "hgb+ridge+plain+mlp", "history_minutes": 20160, "horizons": {"15": {...}},
                     "shed_kw": 0.0, ...},
      "storage": {"path": "...", "ok": true, "errors": {}, "moved_aside": null},
      "config_warnings": ["meter.poll_seconds (20) is longer than ..."]  # check-config's warnings, one sentence
    }                                                # each; [] when none. Settings, not faults: /healthz stays 200

Sections "vtn", "meter", "forecaster", "storage", "schedule" and "device" are shown by the dashboard as key/value
tables (nested objects flattened), so the gateway may add keys freely. Values may be None; NaN/inf floats become
null, datetimes become ISO strings, dataclasses objects.

GET /api/history?hours=24 -> view.history(hours), shaped by ven.history.build_history (its docstring
has the shape), with a weak ETag (view.history_tag(hours), of what the body is made of; without it one of all the
body but "now"): 304 to an If-None-Match of it, made without the body (_history, _history_response).

GET /api/history.csv?hours=24 -> the same body as CSV, one row per minute (ven/history_csv.py), as an attachment.

GET /api/log?level=warning&limit=100 -> view.recent_log(min_level, limit), the log's last lines kept in memory
(ven.logs.RecentLog; level: info (the default), warning or error and above; limit: at most that many, newest):

    {
      "capacity": 500,                               # lines kept at most (INFO and above; never DEBUG)
      "total": 1234,                                 # lines taken since the gateway started, those pushed out too
      "lines": [                                     # newest first
        {"at": "2026-11-22T03:50:12Z", "level": "INFO",        # the log line's time (UTC, to the second)
         "message": "meter answering again after 40 min (...)"}, # and its text, as the line says it
        {"at": "2026-11-22T03:10:02Z", "level": "WARNING", "message": "meter fault: no answer within 5 s"}
      ]
    }
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import enum
import errno
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import aiohttp
from aiohttp import web, web_response
from aiohttp.helpers import ETAG_ANY

from bacnet_api.settle import span

from ven.config import ConfigError, StartBlocked
from ven.config_text import is_loopback_host
from ven.history_csv import history_csv, history_filename
from ven.metrics import Metrics
from ven.tasks import cancel_and_wait

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).with_name("web")
MAX_HISTORY_HOURS = 24 * 35  # forecaster.history_days default: older minutes are not kept anyway; events as long (schedule.KEEP_HISTORY)
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}  # /api/log?level=
MAX_CONNECTIONS = 64  # open at once: a few dashboards (4 requests per refresh), Prometheus, health probes
# The gateway's own file descriptors besides the API's (about 23 at idle: BACnet, the VTN, storage.path's SQLite, a
# fit's pipes), and what each connection costs: under a low RLIMIT_NOFILE (LimitNOFILE=64) the connection limit is
# brought down so it refuses first, before accept() runs out of descriptors (CPython then retried every second,
# its retries multiplying, and asyncio logged thousands of tracebacks a second)
OWN_FDS = 48


def connection_limit(nofile: int | None = None) -> int:
    """MAX_CONNECTIONS, less where the process may not open that many files beside its own."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, (nofile - OWN_FDS - LOOPBACK_RESERVE) // 2))
# Each connection counts toward MAX_CONNECTIONS from its first moment, token or not, so one that sent nothing held
# its place for as long as aiohttp kept it: its keep-alive timeout, 3630 s by default (aiohttp before
# aio-libs/aiohttp#13681 never closed a connection that sent no request at all), and a request head trickled in a
# line at a time kept it too. 64 such connections from anywhere the address is reachable locked out the dashboard,
# /healthz and /metrics for an hour. A browser, curl or Prometheus sends its whole head at once after connecting:
# 10 s leaves a slow link ample room
HEAD_S = 10.0
# Connections from this host let in over MAX_CONNECTIONS (see HttpApi._over_limit)
LOOPBACK_RESERVE = 4
# From an answer to the next request's whole head (aiohttp's keepalive_timeout; it applies to every request head
# after the first). Above the dashboard's refresh (10 s), so an open dashboard keeps its connections from one
# refresh to the next instead of meeting them closed
IDLE_S = 15.0
# An answer the client stopped reading (the kernel's buffers and aiohttp's full) for this long: the connection is
# dropped. Its handler waited on the write for ever, holding its place under MAX_CONNECTIONS: 64 clients asking
# for 35 days of history and reading none of it locked out the dashboard, /healthz and /metrics
WRITE_S = 30.0
# A wrong http.token: each from the same source waits REFUSED_DELAY_S more than the one before, up to
# REFUSED_DELAY_MAX_S, before its 401 (a guesser over one connection tried every 4-digit token in 1.7 s); a mistyped
# token is answered at once. The log says a source's first and, once it has sent none for REFUSED_QUIET_S, how many
REFUSED_DELAY_S = 0.1
REFUSED_DELAY_MAX_S = 1.0
REFUSED_QUIET_S = 60.0
MAX_GUESSERS = 32   # sources followed apart at once; more (spread over many addresses) are followed as one
# what a stop gives requests in flight (aiohttp's default, 60 s, is waited out by a connection made as the stop
# begins: on Python 3.11 aiohttp closes it before its handler runs, drops its request and waits for the client)
STOP_GRACE_S = 1.0
# app.js imports the other modules by relative URL: each needs its route here (a 404 leaves the page blank)
DASHBOARD_MODULES = ("ahead.js", "api.js", "app.js", "chart.js", "chart_keys.js", "chart_readout.js", "chart_words.js",
                     "columns.js", "dom.js", "download.js", "event_shading.js", "format.js", "header.js", "legend.js",
                     "load.js", "log.js", "problems.js", "series.js", "span.js", "state.js", "status.js", "tables.js",
                     "tiles.js", "time_axis.js", "zone.js")
STATIC_FILES = {
    "/": ("index.html", "text/html"),
    **{f"/{name}": (name, "application/javascript") for name in DASHBOARD_MODULES},
    "/style.css": ("style.css", "text/css"),
}


def page_digest() -> str:
    """A digest of the dashboard's files as this process found them at start: /api/status gives it as "page", and
    an open page that sees it change loads itself again. The version alone missed a page changed within one
    version (every install from a commit between two releases has the same version)."""
    digest = hashlib.sha256()
    for name, _ in sorted(STATIC_FILES.values()):
        digest.update(name.encode() + b"\0" + (WEB_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def _host_name(host: str) -> str:
    """The name or address of a Host header, without its port."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    # a trailing dot is DNS's root: "localhost." names localhost too, and a browser sends it only when typed so
    return (host.rpartition(":")[0] if host.count(":") == 1 else host).lower().removesuffix(".")


class GatewayView(Protocol):
    def status(self) -> dict: ...

    def history(self, hours: float) -> dict | Awaitable[dict]: ...  # awaited when it is a coroutine

    # optional: /api/history's ETag for `hours` (text), from what history(hours) would be made of, without making it
    # (a change to any of it a new tag); without it the tag is a hash of the body made
    def history_tag(self, hours: float) -> str | Awaitable[str]: ...

    def health(self) -> tuple[bool, str]: ...

    # optional: without it /api/log answers that no line is kept (capacity 0)
    def recent_log(self, min_level: int, limit: int | None) -> dict: ...


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"http.address must look like host:port, got {address!r}")
    return host, int(port)


is_loopback = is_loopback_host


def to_json(value: Any) -> Any:
    """Make a view's body strictly JSON: NaN/inf -> null, datetimes -> ISO UTC, dataclasses -> dicts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_json(value.tolist())
    return str(value)


def _json_response(body: Any, status: int = 200) -> web.Response:
    text = json.dumps(to_json(body), allow_nan=False, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


_NO_NOW = object()


def _hours(request: web.Request) -> float | None:
    """?hours= of /api/history and its CSV; None when out of range."""
    try:
        hours = float(request.query.get("hours", "24"))
    except ValueError:
        return None
    return hours if 0 < hours <= MAX_HISTORY_HOURS else None


def _asked(asked: tuple | None, tag: aiohttp.ETag) -> bool:
    return bool(asked) and any(t.value in (tag.value, ETAG_ANY) for t in asked)


def _history_unavailable(err: Exception) -> web.Response:
    return _json_response({"error": f"history unavailable: {type(err).__name__}: {err}"}, 500)


def _not_modified(tag: aiohttp.ETag) -> web.Response:
    resp = web.Response(status=304, headers={"Cache-Control": "no-store"})
    resp.etag = tag
    return resp


def _history_response(body: Any, asked: tuple | None, tag: aiohttp.ETag | None = None) -> web.Response:
    """/api/history with a weak ETag: 304 Not Modified for a request whose If-None-Match (`asked`) has it. An open
    dashboard asks at every refresh (every second or so on a control-room screen) for a body that changes once a
    minute and with each meter reading (the minute in progress): with the 304 it draws the chart again only when
    there is something new to draw. The tag is the view's (`tag`, of what the body is made of: GatewayView's
    history_tag), else one of all the body but "now" (when the body was made): "now" alone changes at every answer,
    and the page moves its "now" line by /api/status's "now" meanwhile."""
    data = to_json(body)
    if not isinstance(data, dict):
        return _json_response(data)
    now = data.pop("now", _NO_NOW)
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    if tag is None:
        tag = aiohttp.ETag(value=hashlib.blake2b(text.encode(), digest_size=12).hexdigest(), is_weak=True)
    if _asked(asked, tag):
        return _not_modified(tag)
    if now is not _NO_NOW:   # put back, last: the text hashed is all the rest
        text = text[:-1] + ("," if data else "") + '"now":' + json.dumps(now, allow_nan=False) + "}"
    resp = web.Response(text=text, content_type="application/json", headers={"Cache-Control": "no-store"})
    resp.etag = tag
    return resp


def _csv_response(body: Any, hours: float, now: float) -> web.Response:
    """/api/history.csv: the rows made from the very body /api/history would encode."""
    data = to_json(body)
    return web.Response(text=history_csv(data), content_type="text/csv", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Disposition": f'attachment; filename="{history_filename(data, hours, now)}"'})


# The heartbeat's timer sees a stall that overlaps its due time, as lateness from at least the stall less this period:
# at 1 s a stall over loop_lag_limit + 1 s always fails /healthz. At 0.25 s it woke the idle gateway 4 times a second
# (8 of its 19 loop turns a second at rest; helper idle50)
HEARTBEAT_S = 1.0


class LoopHeartbeat:
    """Measures event-loop responsiveness: how late a periodic timer fires.

    A blocked loop cannot answer /healthz while blocked, so the worst lag of the recent window is
    kept and reported once the loop recovers; a heartbeat that has not beaten for too long means
    the loop is stuck right now (seen when a request squeezes in before the timer).
    """

    def __init__(self, interval: float = HEARTBEAT_S, window: float = 30.0) -> None:
        self.interval = interval
        self.window = window
        self._lags: list[tuple[float, float]] = []  # (monotonic time, lag seconds)
        self._last_beat = time.monotonic()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._last_beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="http-heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            expected = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._last_beat = now
            self._lags.append((now, max(0.0, now - expected)))
            cutoff = now - self.window
            while self._lags and self._lags[0][0] < cutoff:
                self._lags.pop(0)

    def worst_lag(self) -> float:
        now = time.monotonic()
        recent = max((lag for t, lag in self._lags if t >= now - self.window), default=0.0)
        overdue = max(0.0, now - self._last_beat - self.interval)
        return max(recent, overdue)


# No other site frames the dashboard or has a JSON body sniffed as something else. The page draws peers' text as
# text; should a way in be found all the same, nothing runs but the page's own scripts, and nothing is sent
# elsewhere. Inline styles stay: the legend's swatches and the threshold labels take their colours in attributes
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


# aiohttp's own answers to a request its parser refuses (a bad header, a NUL in the path: a scanner's) never reach
# the app's hook below, and named the versions too; it reads this name at each answer
web_response.SERVER_SOFTWARE = "edge-gateway"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # aiohttp's "Python/3.11 aiohttp/3.14.5" told anyone who reached the port, token or not, which versions to try
    response.headers["Server"] = "edge-gateway"


def _from_this_host(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


class _OverLimit(asyncio.Protocol):
    """A connection over max_connections: reset, unless `admit(transport)` gives it a handler after all."""

    def __init__(self, admit: Callable[[asyncio.BaseTransport], asyncio.Protocol | None]) -> None:
        self._admit = admit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self._admit(transport)
        if handler is None:
            transport.abort()
            return
        transport.set_protocol(handler)
        handler.connection_made(transport)


class _HeadBound(asyncio.Protocol):
    """aiohttp's handler for a connection, closed unless the connection's first request head is complete within
    HEAD_S (the later ones have aiohttp's keepalive_timeout, IDLE_S), and dropped when the client leaves an answer
    unread for WRITE_S."""

    def __init__(self, handler: asyncio.Protocol) -> None:
        self.handler = handler
        self._due: asyncio.TimerHandle | None = None
        self._tail = b""    # the end of what came so far: the head's blank line may come split over two reads
        self._transport: asyncio.BaseTransport | None = None
        self._stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._due = asyncio.get_running_loop().call_later(HEAD_S, self._late)
        self.handler.connection_made(transport)

    def _late(self) -> None:
        self._due = None
        self.handler.force_close()

    def data_received(self, data: bytes) -> None:
        if self._due is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._due.cancel()
                self._due = None
            self._tail = seen[-3:]
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        if self._stalled is None:
            self._stalled = asyncio.get_running_loop().call_later(WRITE_S, self._unread)
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self.handler.resume_writing()

    def _unread(self) -> None:
        self._stalled = None
        if self._transport is not None:
            self._transport.abort()     # the handler's write ends with ConnectionResetError, as for a client gone

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._due, self._stalled):
            if timer is not None:
                timer.cancel()
        self.handler.connection_lost(exc)


def _holders(handlers: list) -> str:
    """Who holds the open connections, most first: "61 from 10.0.0.9, 3 from 10.0.0.7"."""
    by_host: collections.Counter[str] = collections.Counter()
    for handler in handlers:
        transport = getattr(handler, "transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        by_host[peer[0] if peer else "an address unknown"] += 1
    top = by_host.most_common(3)
    rest = sum(by_host.values()) - sum(n for _, n in top)
    others = f", {rest} from {len(by_host) - len(top)} other addresses" if rest else ""
    return ", ".join(f"{n} from {host}" for host, n in top) + others


@dataclasses.dataclass
class _Guessing:
    """A source's wrong tokens since its first after a quiet REFUSED_QUIET_S."""
    first: float    # monotonic
    last: float
    refused: int = 0


class HttpServer:
    """aiohttp server for the operator; runs in the gateway's event loop."""

    def __init__(self, view: GatewayView, metrics: Metrics, address: str = "127.0.0.1:8000", token: str = "",
                 *, loop_lag_limit: float = 2.0, heartbeat_interval: float = HEARTBEAT_S,
                 lag_window: float = 30.0) -> None:
        self.view = view
        self.metrics = metrics
        self.host, self._port = parse_address(address)
        self.token = token
        if not token and not is_loopback(self.host):
            raise ConfigError(
                f"http.address {address} is not a loopback address: set http.token (clients then send "
                f"'Authorization: Bearer <token>') or bind to 127.0.0.1")
        self.loop_lag_limit = loop_lag_limit
        self.heartbeat = LoopHeartbeat(heartbeat_interval, lag_window)
        self._runner: web.AppRunner | None = None
        self._waiting: asyncio.Task | None = None   # listening for an address not on an interface yet
        self._started = time.monotonic()
        self._failing: dict[str, str] = {}  # endpoint -> error text, to log a fault once
        self.max_connections = connection_limit()
        self.loopback_reserve = LOOPBACK_RESERVE
        self._listener: asyncio.AbstractServer | None = None
        self._refused = 0                   # connections closed at once since the limit was reached
        self._refusing_since = 0.0          # monotonic, when the limit was reached
        self._cap_check: asyncio.TimerHandle | None = None
        self._accepting = 0                 # let in, their connection_made (where aiohttp counts them) to come
        self._guessing: dict[str | None, _Guessing] = {}   # source (None: the ones past MAX_GUESSERS) -> its run
        self._guessing_check: asyncio.TimerHandle | None = None
        self.page = page_digest()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/api/history.csv", self._history_csv)
        app.router.add_get("/api/log", self._log)
        app.router.add_get("/metrics", self._metrics)
        for route in STATIC_FILES:
            app.router.add_get(route, self._static)
        return app

    async def start(self) -> None:
        self._started = time.monotonic()
        try:
            await self._listen()
        except OSError as err:
            if err.errno != errno.EADDRNOTAVAIL:
                # another program's port may be freed; anything else (EACCES: a port under 1024) needs an edit
                blocked = StartBlocked if err.errno == errno.EADDRINUSE else ConfigError
                raise blocked(f"http.address {self.host}:{self._port}: cannot listen: {err.strerror}") from None
            # the address is not on an interface yet (a NIC up after the service, DHCP late): the BACnet device
            # and the rest must not wait for the operator's dashboard, so it listens once the address is there
            log.warning("http.address %s:%d: %s is not on any interface of this machine (yet): the dashboard, "
                        "/healthz and /metrics listen once it is", self.host, self._port, self.host)
            self._waiting = asyncio.get_running_loop().create_task(self._listen_when_there())
            return
        self._listening()

    async def _listen(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE_S,
                               keepalive_timeout=IDLE_S)
        await runner.setup()
        try:
            # asyncio accepts as many connections as wait in the listen backlog in one go (up to 100), each a file
            # descriptor, before _connection is asked about any: a burst while the loop was busy ran a process
            # at LimitNOFILE=64 out of them. A backlog no deeper than the connections it may keep bounds that
            listener = await asyncio.get_running_loop().create_server(
                lambda: self._connection(runner.server), self.host, self._port, reuse_address=True,
                backlog=min(100, self.max_connections + self.loopback_reserve))
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        self._port = listener.sockets[0].getsockname()[1]

    async def _listen_when_there(self) -> None:
        traced = False
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._listen()
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL:
                    continue
                log.error("http.address %s:%d: cannot listen: %s; the dashboard stays off until a restart",
                          self.host, self._port, err.strerror)
                return
            except Exception as err:  # noqa: BLE001 - a bug: this task ended unsaid, and the stop line lost the wait
                if not traced:
                    log.error("http.address %s:%d: listening failed (a bug in the gateway): %s: %s; tried again "
                              "every 1 s", self.host, self._port, type(err).__name__, err, exc_info=err)
                traced = True
                continue
            self._listening(waited=True)
            return

    def _listening(self, waited: bool = False) -> None:
        self.heartbeat.start()
        auth = "bearer token required" if self.token else "no token"
        few = (f"; at most {self.max_connections} connections, as the process may open only "
               f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]} files (LimitNOFILE, ulimit -n)"
               if self.max_connections < MAX_CONNECTIONS else "")
        log.info("http dashboard on %s/ (%s)%s%s", self.url, auth,
                 f", its address there after {span(time.monotonic() - self._started)}" if waited else "", few)

    def open_faults(self) -> list[str]:
        """What its log said began and has not said ended, for the stop line."""
        out = [f"http {name} failing ({text})" for name, text in self._failing.items()]
        if self._waiting is not None and not self._waiting.done():
            out.append(f"http.address {self.host}:{self._port} not on an interface yet")
        if self.refusing:
            out.append("HTTP connections over the limit refused")
        for key, run in self._guessing.items():
            who = key if key is not None else f"more than {MAX_GUESSERS} addresses"
            out.append(f"http: wrong bearer tokens from {who} ({run.refused} refused)")
        return out

    async def stop(self) -> None:
        await cancel_and_wait(self._waiting)
        self._waiting = None
        await self.heartbeat.stop()
        if self._cap_check:
            self._cap_check.cancel()
        if self._guessing_check:
            self._guessing_check.cancel()
            self._guessing_check = None
        if self._listener:
            self._listener.close()
            self._listener = None
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    def _connection(self, server: web.Server) -> asyncio.BaseProtocol:
        """aiohttp's handler for a new connection, unless max_connections are open: a client holding connections
        (each accepted before any token check; HEAD_S and IDLE_S close idle ones, but a client can open them again
        as fast) otherwise used up the process's file descriptors (1024 under systemd), and with them the VTN's
        connections and storage.path."""
        if len(server.connections) + self._accepting >= self.max_connections:
            return _OverLimit(lambda transport: self._over_limit(server, transport))
        # Not the end of the limit: under load a burst can dip below it for a moment and fill it again (seen as
        # "accepting connections again after 0 s" and a second WARNING); the 1 s check says the end
        # The transport schedules connection_made right after this returns, and a burst reaching the backlog
        # is accepted in one go, each of it let in before any was counted: counted here until after that
        self._accepting += 1
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._counted)
        return _HeadBound(server())

    def _over_limit(self, server: web.Server, transport: asyncio.BaseTransport) -> asyncio.Protocol | None:
        """A handler for a connection from this host while fewer than LOOPBACK_RESERVE are over the limit, else None
        (refused, and counted): the container's health check and a Prometheus beside the gateway still get their
        answers while a host on the network holds every connection (the orchestrator restarted a gateway whose
        BACnet and VTN were working, and Prometheus called it down)."""
        peer = transport.get_extra_info("peername") or ("",)
        if _from_this_host(peer[0]) and len(server.connections) < self.max_connections + self.loopback_reserve:
            return _HeadBound(server())
        self._refused += 1
        if self._refused == 1:
            self._refusing_since = time.monotonic()
            loop = asyncio.get_running_loop()
            # said once those let in just before are in aiohttp's count (as for _counted): it names who holds them
            loop.call_soon(loop.call_soon, self._say_refusing, server)
            self._cap_check = loop.call_later(1.0, self._below_cap, server)
        return None

    @property
    def refusing(self) -> bool:
        """Connections over max_connections are being refused: the log said so and has not yet said the end."""
        return self._refused > 0

    def _below_cap(self, server: web.Server) -> None:
        """The limit's end is said when the held connections close, not at the next connection (hours later,
        if the operator's browser keeps its own open), so it is looked for every second while refusing."""
        if not self._refused:
            return
        if len(server.connections) + self._accepting >= self.max_connections:
            self._cap_check = asyncio.get_running_loop().call_later(1.0, self._below_cap, server)
            return
        self._cap_check.cancel()
        log.info("http: accepting connections again after %s (%d refused)",
                 span(time.monotonic() - self._refusing_since), self._refused)
        self._refused = 0

    def _say_refusing(self, server: web.Server) -> None:
        # the holders named, so that the operator can find the host holding the connections, or block it
        holders = _holders(server.connections)
        log.warning("http: %d connections open%s, refusing new ones until some close", self.max_connections,
                    f" ({holders})" if holders else "")

    def _counted(self) -> None:
        self._accepting -= 1

    # -- middleware -------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if not self.token and request.path not in STATIC_FILES and request.path != "/healthz":
            # Without a token only loopback reaches the API, but a web page the operator opens on this box (or
            # through an ssh tunnel) can rebind its own name to 127.0.0.1 and read it as same-origin: the Host
            # its browser sends still names that page's site, never a loopback address.
            host = request.headers.get("Host")
            if host is not None and not is_loopback(_host_name(host)):
                return web.json_response({"error": f"Host {host!r} is not a loopback address: without http.token "
                                                   f"the API answers only requests made to 127.0.0.1 or localhost"},
                                         status=403, headers={"Cache-Control": "no-store"})
        if self.token and request.path not in STATIC_FILES and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            # aiohttp hands bytes that are not UTF-8 over as surrogates: compared as the bytes sent, not a 500
            sent, expected = (t.encode("utf-8", "surrogateescape") for t in (credential.strip(), self.token))
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent, expected):
                if "Authorization" in request.headers:    # none: a dashboard opened without its token, not a guess
                    await self._wrong_token(request.remote or "an address unknown")
                return web.json_response({"error": "bearer token required (Authorization: Bearer <http.token>)"},
                                         status=401, headers={"WWW-Authenticate": 'Bearer realm="edge-gateway"',
                                                              "Cache-Control": "no-store"})
        return await handler(request)

    async def _wrong_token(self, source: str) -> None:
        """Count a wrong token from `source`, say its first, and slow the answer down (other clients are not)."""
        self.metrics.http_auth_refused.inc()
        now = time.monotonic()
        key = source if source in self._guessing or len(self._guessing) < MAX_GUESSERS else None
        run = self._guessing.get(key)
        if run is None:
            run = self._guessing[key] = _Guessing(now, now)
            who, them = (source, "it") if key is not None else \
                (f"more than {MAX_GUESSERS} addresses at once ({source} among them)", "them")
            log.warning("http: wrong bearer token from %s, refused (more from %s are counted, answered more slowly "
                        "and said when they stop)", who, them)
            if self._guessing_check is None:
                self._guessing_check = asyncio.get_running_loop().call_later(REFUSED_QUIET_S, self._guessing_over)
        run.last = now
        run.refused += 1
        await asyncio.sleep(min(REFUSED_DELAY_MAX_S, REFUSED_DELAY_S * (run.refused - 1)))

    def _guessing_over(self) -> None:
        """One line for each source that has sent no wrong token for REFUSED_QUIET_S."""
        now = time.monotonic()
        for key, run in list(self._guessing.items()):
            if now - run.last >= REFUSED_QUIET_S:
                del self._guessing[key]
                who = key if key is not None else f"more than {MAX_GUESSERS} addresses"
                over = f" over {span(run.last - run.first)}" if run.refused > 1 else ""
                log.info("http: no wrong bearer token from %s for %s: %d refused%s", who, span(REFUSED_QUIET_S),
                         run.refused, over)
        self._guessing_check = None
        if self._guessing:
            due = min(run.last for run in self._guessing.values()) + REFUSED_QUIET_S
            self._guessing_check = asyncio.get_running_loop().call_later(max(0.0, due - now), self._guessing_over)

    # -- handlers ---------------------------------------------------------------------------

    async def _call(self, name: str, fn, *args) -> Any:
        """Call the view; one log line when an endpoint starts failing and one when it recovers."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            if self._failing.get(name) != text:
                # the traceback at the start: a bug in the gateway, which the text alone does not place
                log.warning("http %s failing: %s", name, text, exc_info=err if name not in self._failing else None)
                self._failing[name] = text
            raise
        if self._failing.pop(name, None) is not None:
            log.info("http %s recovered", name)
        return result

    async def _healthz(self, request: web.Request) -> web.Response:
        lag = self.heartbeat.worst_lag()
        self.metrics.event_loop_lag_seconds.set(lag)
        reasons = []
        try:
            ok, reason = await self._call("healthz", self.view.health)
        except Exception as err:
            ok, reason = False, f"health check raised {type(err).__name__}: {err}"
        if not ok:
            reasons.append(reason or "unhealthy")
        if lag > self.loop_lag_limit:
            reasons.append(f"event loop lagged {lag:.1f} s (limit {self.loop_lag_limit:g} s) "
                           f"in the last {self.heartbeat.window:g} s")
        if reasons:
            return web.Response(text="; ".join(reasons) + "\n", status=503, headers={"Cache-Control": "no-store"})
        return web.Response(text=(reason or "ok") + "\n", headers={"Cache-Control": "no-store"})

    async def _status(self, request: web.Request) -> web.Response:
        try:
            body = await self._call("status", self.view.status)
        except Exception as err:
            return _json_response({"error": f"status unavailable: {type(err).__name__}: {err}"}, 500)
        return _json_response({**body, "page": self.page} if isinstance(body, dict) else body)

    async def _read_history(self, request: web.Request, hours: float | None) -> Any:
        """The view's history body for a request whose ?hours= read as `hours` (_hours), or the error response (a
        web.Response) to give instead."""
        if hours is None:
            return _json_response({"error": f"hours must be a number above 0 and at most {MAX_HISTORY_HOURS}, "
                                            f"got {request.query.get('hours', '24')!r}"}, 400)
        try:
            return await self._call("history", self.view.history, hours)
        except Exception as err:
            return _history_unavailable(err)

    async def _history(self, request: web.Request) -> web.Response:
        tag, hours = None, _hours(request)
        if hours is not None and (tag_of := getattr(self.view, "history_tag", None)) is not None:
            # the view's tag of what the body is made of: a refresh with nothing new makes no body
            try:
                tag = aiohttp.ETag(value=await self._call("history", tag_of, hours), is_weak=True)
            except Exception as err:
                return _history_unavailable(err)
            if _asked(request.if_none_match, tag):
                return _not_modified(tag)
        read = await self._read_history(request, hours)
        if isinstance(read, web.Response):
            return read
        # off the event loop: 35 days are 50,400 minutes in 8 series, 2 MB of JSON and about 0.1 s to encode,
        # on every refresh of a dashboard opened with ?hours=840
        return await asyncio.to_thread(_history_response, read, request.if_none_match, tag)

    async def _history_csv(self, request: web.Request) -> web.Response:
        hours = _hours(request)
        read = await self._read_history(request, hours)
        if isinstance(read, web.Response):
            return read
        # off the loop too: 35 days are 3.2 MB of CSV, 0.3-0.5 s to make
        return await asyncio.to_thread(_csv_response, read, hours, time.time())

    async def _log(self, request: web.Request) -> web.Response:
        level, raw_limit = request.query.get("level", "info"), request.query.get("limit")
        if level.lower() not in LOG_LEVELS:
            return _json_response({"error": f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"}, 400)
        try:
            limit = None if raw_limit is None else int(raw_limit)
        except ValueError:
            limit = 0
        if limit is not None and limit < 1:
            return _json_response({"error": f"limit must be a whole number above 0, got {raw_limit!r}"}, 400)
        recent = getattr(self.view, "recent_log", None)
        if recent is None:
            return _json_response({"capacity": 0, "total": 0, "lines": []})
        try:
            body = await self._call("log", recent, LOG_LEVELS[level.lower()], limit)
        except Exception as err:
            return _json_response({"error": f"log unavailable: {type(err).__name__}: {err}"}, 500)
        return _json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        refresh = getattr(self.view, "refresh_metrics", None)
        if refresh is not None:  # counters owned elsewhere are synced at scrape time
            try:    # through _call: aiohttp said a failure as a client's bad request, without its traceback
                await self._call("metrics", refresh)
            except Exception as err:
                return web.Response(status=500, text=f"metrics unavailable: {type(err).__name__}: {err}\n")
        self.metrics.uptime_seconds.set(time.monotonic() - self._started)
        self.metrics.event_loop_lag_seconds.set(self.heartbeat.worst_lag())
        resp = web.Response(body=self.metrics.render(), headers={"Cache-Control": "no-store"})
        resp.headers["Content-Type"] = self.metrics.content_type
        return resp

    async def _static(self, request: web.Request) -> web.Response:
        name, content_type = STATIC_FILES[request.path]
        body = (WEB_DIR / name).read_bytes()
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

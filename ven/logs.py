"""Operator log format: one line per thing that happened, UTC ISO timestamps.

INFO lines read
`2026-11-21T20:09:30Z telemetry 96.46 kW -> TELEMETRY_USAGE (interval 2026-11-21T20:09:30Z + PT10S, 1 waiting)`;
other levels carry their level name so warnings stand out when the log is scanned.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import sys
import time
import traceback

NOISY = ("BAC0_Root", "BAC0", "bacpypes3", "openleadr", "aiohttp.access", "aiohttp.server", "signxml", "tzlocal",
         "asyncio")
# Loggers that log what a peer sent: a malformed BACnet datagram, a refused registration, an HTTP
# request aiohttp cannot parse (over-long URL or header), each with a traceback, before any token check.
# bacnet_api.services.refusals: DeviceCommunicationControl and ReinitializeDevice refused, one line each;
# bacnet_api.services.cov_subscribers: a COV subscriber gone silent, whose address a request may make up.
# bacnet_api.stray_datagrams: a datagram on the BACnet port that is not BACnet/IP.
PEER_NOISE = ("bacpypes3", "openleadr", "aiohttp.server", "bacnet_api.services.refusals",
              "bacnet_api.services.cov_subscribers", "bacnet_api.stray_datagrams")


# What a peer wrote reaches messages (an event id, a VTN's error page, lxml's error): a line break in it would
# start a line of the peer's making in the operator log (journald keeps each as an entry of the gateway's). Beyond
# ASCII's controls: C1's (an 8-bit CSI some terminals act on, NEL), Unicode's line and paragraph separators, and the
# bidirectional overrides and isolates, with which a VTN's event id showed the rest of the line reversed; the marks
# that reorder neutral runs (LRM, RLM, ALM), and the characters that hide text: zero-width ones, the BOM, the soft
# hyphen, the Mongolian vowel separator, the interlinear annotation marks and the tag characters
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069"
                      "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]")
# A message's bound in the log: a VTN's 200,000-character event id was one line of that length in the journal
MAX_CHARS = 16_000


def _escape(char: re.Match) -> str:
    return repr(char.group())[1:-1]     # "\n", "\r", "\x1b", "\u202e"


def clean(message: str) -> str:
    """A message as the log says it: controls escaped, cut at MAX_CHARS (saying so)."""
    text = _CONTROL.sub(_escape, message)
    return text if len(text) <= MAX_CHARS else f"{text[:MAX_CHARS]}... (cut at {MAX_CHARS:,} characters)"


class UtcFormatter(logging.Formatter):
    converter = time.gmtime
    journal = False     # each line led by its syslog priority, "<4>", which journald takes and strips

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", self.converter(record.created))

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record)
        text = clean(record.getMessage())
        if record.levelno != logging.INFO:
            text = f"{record.levelname} {text}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:    # a traceback's lines too: journald makes each line an entry of its own
            lead = f"<{_priority(record.levelno)}>"
            return "\n".join(f"{lead}{stamp} {line}" if i == 0 else lead + line
                             for i, line in enumerate(text.split("\n")))
        return f"{stamp} {text}"

    def formatException(self, exc_info) -> str:
        """The traceback, its frames a line each; the exception's own words (which may be a peer's: a KeyError on a
        VTN's event id) escaped to one line and bounded, as a message is."""
        out = []
        for chunk in traceback.format_exception(*exc_info):
            if chunk.startswith("  File "):     # the code's own file, line and source
                out.extend(_CONTROL.sub(_escape, line) for line in chunk.rstrip("\n").split("\n"))
            else:
                out.append(clean(chunk.strip("\n")))
        return "\n".join(out)


def _priority(levelno: int) -> int:
    # syslog's: 2 critical, 3 error, 4 warning, 6 info, 7 debug
    return 7 if levelno < logging.INFO else 6 if levelno < logging.WARNING else 4 if levelno < logging.ERROR \
        else 3 if levelno < logging.CRITICAL else 2


def refusal(text: str) -> None:
    """A refusal said before logging is set up (a bad config, a port or storage.path in use): on stderr, as an error
    to journald, so that `journalctl -p warning` shows why the service does not start; plain elsewhere."""
    print(f"{'<3>' if _is_journal(sys.stderr) else ''}{text}", file=sys.stderr)


def caution(text: str, stream=None) -> None:
    """A warning said by a command that logs nothing else (read-meter, health, points): on stderr (or `stream`:
    check-config's stdout), as refusal(), at the journal's warning priority."""
    stream = stream or sys.stderr
    print(f"{'<4>' if _is_journal(stream) else ''}{text}", file=stream)


def _is_journal(stream) -> bool:
    """Whether `stream` is the one systemd connected to the journal: it says so in JOURNAL_STREAM as
    "device:inode" of that stream (sd-daemon(3)); a pipe or file the service redirects elsewhere keeps
    plain lines."""
    try:
        dev, ino = (int(x) for x in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError, AttributeError):   # io.UnsupportedOperation is an OSError
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class FloodGuard(logging.Filter):
    """bacpypes3 logs every malformed datagram it receives as an ERROR with a traceback, so anyone on
    the BACnet network could fill the disk with the log; aiohttp does the same for every HTTP request
    it cannot parse (a URL or header over 8 KB), before the token is checked; openleadr logs two ERROR lines for each
    registration a VTN refuses, at every retry (the gateway says so once itself); and the gateway's own line
    for each BACnet request it refuses (a password guesser sends DeviceCommunicationControl in a loop). For those keep
    the first record of each
    kind (same logger, same message template; see _kind) as one WARNING line without traceback, then at most one
    line per `every` seconds saying how many more there were."""

    def __init__(self, prefixes: tuple[str, ...] = PEER_NOISE, every: float = 600.0):
        super().__init__()
        self.prefixes = prefixes
        self.every = every
        self._seen: dict[tuple[str, object], list] = {}     # key -> [last emitted (monotonic), suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        # each handler asks (the stream's and RecentLog's): a record is judged once, so a repeat the stream drops
        # is dropped from the dashboard's lines too, and the first's "(repeats are counted ...)" is said once
        verdict = getattr(record, "flood_guard_verdict", None)
        if verdict is None:
            verdict = record.flood_guard_verdict = self._judge(record)
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes) or record.levelno < logging.WARNING:
            return True
        record.exc_info, record.exc_text = None, None
        if record.levelno > logging.WARNING:    # the peer's garbage, not the gateway's error
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        now = time.monotonic()
        key = (record.name, _kind(record))
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = [now, 0]
            record.msg = f"{record.msg} (repeats are counted, one line per {self.every:g} s at most)"
            return True
        if now - seen[0] < self.every:
            seen[1] += 1
            return False
        if seen[1]:
            record.msg = f"{record.msg} (and {seen[1]} more like it in the last {now - seen[0]:.0f} s)"
        self._seen[key] = [now, 0]
        return True


# a token with a digit in it: a number, an address, a port, an id
_VARYING = re.compile(r"[\w.:/-]*\d[\w.:/-]*")


def _kind(record: logging.LogRecord) -> str:
    """What makes records repeats: the message template, or, for a message the stack formatted itself
    (openleadr's f-strings carry the status, the URL and ids), its text with such tokens masked."""
    return str(record.msg) if record.args else _VARYING.sub("#", str(record.msg))


class QuietAcceptErrors:
    """The event loop's exception handler: asyncio's "socket.accept() out of system resource" (the process out of
    file descriptors: LimitNOFILE, ulimit -n) is one WARNING, then at most one line a minute with how many more;
    anything else goes to asyncio's own handler. CPython retries such an accept every second, its retries
    multiplying, each an ERROR with a traceback: 9,082 in a minute at LimitNOFILE=64."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._said_at: float | None = None
        self._more = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if not str(context.get("message", "")).startswith(self.MESSAGE):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < self.every:
            self._more += 1
            return
        err = context.get("exception")
        more = f" ({self._more} more since the last line)" if self._more else ""
        logging.getLogger("ven.http_api").warning(
            "http: a connection could not be accepted: %s: the process is out of file descriptors (LimitNOFILE, "
            "ulimit -n); connections wait meanwhile%s (one line a minute at most while it lasts)", err, more)
        self._said_at, self._more = now, 0


class RecentLog(logging.Handler):
    """The last `capacity` lines of the log at INFO and above, in memory, for the dashboard's "Recent log"
    (GET /api/log): the site's controls contractor has the dashboard but no shell, so no other way to see that
    the meter was silent overnight and came back. Each line as the log says it, without its time and level (kept
    apart) and cut at `max_chars`, so the memory it holds has a bound whatever a peer's text in a message.

    At 500 lines (tracemalloc): 0.12 MB of the typical 90-character lines, 0.16 MB of 250 (the longest seen in
    fault runs 260), 0.57 MB all cut at 1,000 ASCII characters, 2.2 MB at worst (1,000 characters outside the
    BMP, 4 bytes each). Hence the ASCII "..." of a cut line: one "…" makes the whole string 2 bytes a character.

    Records come from worker threads too (the forecaster's fit, the executor): logging.Handler.handle holds
    self.lock around emit, and reads take it as well. Attach it to the root logger after setup_logging
    (which replaces the root's handlers); ven.app.Gateway does so while it runs."""

    def __init__(self, capacity: int = 500, max_chars: int = 1000):
        super().__init__(logging.INFO)     # never DEBUG: a line per reading would push out the night's faults
        self.capacity = capacity
        self.max_chars = max_chars
        self._lines: collections.deque[tuple[float, int, str]] = collections.deque(maxlen=capacity)
        self.total = 0          # lines taken since it was made, the ones pushed out included
        self.addFilter(FloodGuard())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _CONTROL.sub(_escape, record.getMessage())
        except Exception:   # noqa: BLE001 - a bad format string: the stream handler reports it
            return
        if len(text) > self.max_chars:
            whole = "the whole line" if len(text) <= MAX_CHARS else f"its first {MAX_CHARS:,} characters"
            text = f"{text[:self.max_chars]}... (cut at {self.max_chars} characters; the log has {whole})"
        self._lines.append((record.created, record.levelno, text))
        self.total += 1

    def lines(self, min_level: int = logging.INFO, limit: int | None = None) -> list[tuple[float, int, str]]:
        """(time.time(), levelno, message) of the newest `limit` lines at `min_level` and above, newest first."""
        return self._read(min_level, limit)[1]

    def body(self, min_level: int = logging.INFO, limit: int | None = None) -> dict:
        """GET /api/log's answer (ven/http_api.py has its shape)."""
        total, lines = self._read(min_level, limit)
        return {"capacity": self.capacity, "total": total,
                "lines": [{"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                           "level": logging.getLevelName(levelno), "message": text}
                          for created, levelno, text in lines]}

    def _read(self, min_level: int, limit: int | None) -> tuple[int, list[tuple[float, int, str]]]:
        with self.lock:     # the total and the lines of one moment
            total, kept = self.total, list(self._lines)
        picked = [line for line in reversed(kept) if line[1] >= min_level]
        return total, picked if limit is None else picked[:limit]

    def attach(self) -> None:
        logging.getLogger().addHandler(self)

    @contextlib.contextmanager
    def attached(self):
        """Attached for a while (what a Gateway logs as it is made, before it starts)."""
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)


def setup_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = UtcFormatter()
    # under systemd, `journalctl -p warning -u edge-gateway` then lists the faults; without the
    # priority journald gives every line "info"
    formatter.journal = _is_journal(handler.stream)
    handler.setFormatter(formatter)
    handler.addFilter(FloodGuard())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party stacks are chatty at INFO; the operator sees only their warnings.
    floor = max(logging.WARNING, logging.getLevelName(level))
    for name in NOISY:
        logging.getLogger(name).setLevel(floor)

"""Operator log format: one line per thing that happened, UTC ISO timestamps.

INFO lines read `2026-11-21T20:09:30Z telemetry 96.46 kW -> TELEMETRY_USAGE (sent)`; other levels
carry their level name so warnings stand out when the log is scanned.
"""
from __future__ import annotations

import logging
import sys
import time

NOISY = ("BAC0_Root", "BAC0", "bacpypes3", "openleadr", "aiohttp.access", "aiohttp.server", "signxml")


class UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", self.converter(record.created))

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record)
        text = record.getMessage()
        if record.levelno != logging.INFO:
            text = f"{record.levelname} {text}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {text}"


def setup_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(UtcFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party stacks are chatty at INFO; the operator sees only their warnings.
    floor = max(logging.WARNING, logging.getLevelName(level))
    for name in NOISY:
        logging.getLogger(name).setLevel(floor)

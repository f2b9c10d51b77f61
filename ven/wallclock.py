"""The date below which the wall clock cannot be right.

A box without a battery-backed clock boots at a fixed date (often 2020-01-01) and runs on it until
NTP steps it. Anything the gateway dates by that clock meanwhile is wrong by years: a meter reading
reported to the VTN would be taken by the utility as a real reading of that year, and an event's end
cannot be judged. This version cannot run before it was built, so an earlier reading proves the
clock wrong. Raise it with each release; a clock that is wrong but later than this is not detected.
"""
from __future__ import annotations

from datetime import datetime, timezone

CLOCK_FLOOR = datetime(2026, 11, 1, tzinfo=timezone.utc)


def clock_suspect(now: datetime) -> bool:
    """True when `now` (aware) is before this version was built: the wall clock is not set."""
    return now < CLOCK_FLOOR

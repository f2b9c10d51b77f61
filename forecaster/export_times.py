"""The times of a building's exported series: ISO 8601, epoch, a strptime format, zone names (CET, LHDT, NPT), and
the hour an autumn clock change repeats read as two, in whichever order the file lists it. Nothing is guessed that
could read a time wrong: a day and month that could be either is refused with the option that settles it."""
from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

# Meter data lies between these; anything outside is a mistyped row (epoch milliseconds in a series
# of seconds, a wrong year) that would otherwise set the replay walking cycle by cycle for decades.
TIME_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc).timestamp()
TIME_MAX = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc).timestamp()


def _resolve_fold(d: dt.datetime, folds: dict | None) -> dt.datetime:
    """`d` (naive wall time with its zone set) in the pass of a repeated hour the file order implies. A wall time
    the clocks skipped (02:30 on the spring-forward night) is listed in folds["skipped"] for the replay's notes."""
    if folds is not None and d.astimezone(dt.timezone.utc).astimezone(d.tzinfo).replace(tzinfo=None) \
            != d.replace(tzinfo=None):
        folds.setdefault("skipped", []).append(d.replace(tzinfo=None))
    if folds is None:
        return d
    wall = d.replace(tzinfo=None)
    last = folds.get("last")
    if last is not None and wall != last:   # the file's order so far: steps back outnumber steps ahead when newest first
        folds["back"] = folds.get("back", 0) + (1 if wall < last else -1)
        folds["step"] = abs(wall - last)    # the last step that moved: the data's spacing
    folds["last"] = wall
    if d.utcoffset() != d.replace(fold=1).utcoffset():
        key = d.date()
        newest_first = folds.get("back", 0) > 0
        previous, fold = folds.get(key, (None, 1 if newest_first else 0))
        # Oldest first, the second pass begins with a step back, newest first the first pass with a step ahead: by the
        # repeat less one sample, half of it or more (Lord Howe's clocks go back 30 minutes, not an hour), or none
        # (hourly data). Smaller steps are the file's own order.
        step = None if previous is None else (previous - wall if not newest_first else wall - previous)
        repeat = d.replace(fold=0).utcoffset() - d.replace(fold=1).utcoffset()
        # the same wall time again is the other pass in hourly data, a row given twice in finer data
        again = step == dt.timedelta(0) and folds.get("step", repeat) > repeat / 2
        if step is not None and (again or step >= repeat / 2):
            fold = 0 if newest_first else 1
        folds[key] = (wall, fold)
        d = d.replace(fold=fold)
    return d


class TimeFormatError(ValueError):
    """A time that does not read as its format says; the message says what it is or should be."""


EPOCH_FORMATS = {"epoch": 1.0, "epoch-ms": 0.001}
EXAMPLE_FORMAT = "'%d/%m/%Y %H:%M'"


# What Java (Niagara) writes for zones whose time zone database name is an offset ("+0545"): where the clocks change,
# the name is what tells the two passes of the repeated half hour apart
JAVA_NAMES = {"LHST": "+1030", "LHDT": "+11", "CHAST": "+1245", "CHADT": "+1345"}


@lru_cache(maxsize=8)
def _offsets_named(year: int) -> dict[str, set[dt.timedelta]]:
    """Each abbreviation the time zone database uses in `year` (January and July), with the offsets it names."""
    named: dict[str, set[dt.timedelta]] = {}
    for key in available_timezones():
        try:
            tz = ZoneInfo(key)
        except (ValueError, OSError):
            continue
        for month in (1, 7):
            local = dt.datetime(year, month, 15, 12, tzinfo=tz)
            named.setdefault(local.tzname(), set()).add(local.utcoffset())
    return named


def _zone_named(d: dt.datetime, name: str, tz: ZoneInfo) -> dt.datetime:
    """Naive `d` in `tz`, in the pass whose abbreviation is `name` (CET or CEST), as Niagara writes them."""
    if name.upper() in ("UTC", "GMT", "Z"):
        return d.replace(tzinfo=dt.timezone.utc)
    passes = [d.replace(tzinfo=tz, fold=fold) for fold in (0, 1)]
    for local in passes:
        if local.tzname() in (name, JAVA_NAMES.get(name)):
            return local
    names = sorted({local.tzname() for local in passes})
    offsets = {p.utcoffset() for p in passes}
    if all(n[:1] in "+-" for n in names) and name.isalpha() and name not in JAVA_NAMES and len(offsets) == 1 \
            and offsets <= _offsets_named(d.year).get(name, offsets):
        # the database names this zone by its offset (Asia/Kathmandu: +0545) and a BAS by a word (NPT): with one
        # offset at that time there is no pass to choose, so the word cannot place the reading wrong; unless the
        # database gives the word to other offsets only (CET read with --timezone Asia/Dubai: the wrong zone given)
        return passes[0]
    raise TimeFormatError(f"says zone {name!r}, which is not what {tz.key} calls that time ({' or '.join(names)}); "
                          "set forecaster.timezone (e.g. --timezone Europe/Rome), or put the name in --time-format "
                          "in place of %Z")


def parse_time(text: str, tz: ZoneInfo, folds: dict | None = None, time_format: str | None = None) -> float:
    """Epoch seconds from an ISO 8601 timestamp (naive means the forecaster's time zone) or a number; with
    `time_format`, from a strptime format ("%d/%m/%Y %H:%M"; a trailing %Z takes the zone's abbreviation,
    CET or CEST) or "epoch" / "epoch-ms".

    `folds`, one dict kept across the rows of a file, resolves naive times in the hour a clock change
    repeats: the wall clock going back inside that hour (02:45, then 02:00 again; 02:00 twice in hourly
    data) starts its second pass.
    Without it, both passes would land on the first and the real second hour would be missing."""
    text = text.strip()
    if time_format in EPOCH_FORMATS:
        return float(text) * EPOCH_FORMATS[time_format]
    if time_format:
        fmt, zone = time_format, None
        if fmt.endswith("%Z"):   # strptime's %Z knows only UTC and this machine's own zone names
            fmt = fmt[:-2].rstrip()
            text, _, zone = text.rpartition(" ") if " " in text else ("", "", text)
        try:
            d = dt.datetime.strptime(text.strip(), fmt)
        except ValueError:
            raise TimeFormatError(f"does not match --time-format {time_format!r}") from None
        if zone is not None and d.tzinfo is None:
            return _zone_named(d, zone, tz).timestamp()
    else:
        try:
            return float(text)
        except ValueError:
            pass
        try:
            d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            # 01/02/2019 is the 1st of February or the 2nd of January: never guessed, the file's format is asked for
            raise TimeFormatError("is not ISO 8601 or epoch seconds; give its format, e.g. "
                                  f"--time-format {EXAMPLE_FORMAT}") from None
    if d.tzinfo is None:
        d = _resolve_fold(d.replace(tzinfo=tz), folds)
    return d.timestamp()


def time_problem(t: float, time_format: str | None = None) -> str | None:
    if not math.isfinite(t):
        return "is not a finite time"
    if TIME_MIN <= t < TIME_MAX:
        return None
    hint = ""
    if TIME_MIN * 1000 <= t < TIME_MAX * 1000 and time_format != "epoch-ms":
        hint = " (epoch milliseconds? pass --time-format epoch-ms)"
    return f"is outside 1970-2100{hint}"

"""Local calendar for the features: day numbers, day kinds (workday / Saturday / Sunday-or-holiday).

Which weekdays are which is the site's: a Nepali office rests on Saturday only, a Saudi one on Friday with
Saturday half open. The kinds keep their names (SATURDAY is "the partial day", RESTDAY "closed, as a holiday").

Everything else in the forecaster counts absolute minutes since the epoch; only the calendar needs
the building's wall clock, because occupancy follows it.
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

WORKDAY, SATURDAY, RESTDAY = 0, 1, 2

# Fixed-date national holidays; Easter Monday is computed per year.
_FIXED = {
    "IT": ["01-01", "01-06", "04-25", "05-01", "06-02", "08-15", "11-01", "12-08", "12-25", "12-26"],
}
PRESETS = ("IT",)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_REST, DEFAULT_PARTIAL = ("sunday",), ("saturday",)


def _easter(year: int) -> dt.date:
    # Anonymous Gregorian algorithm (Meeus/Jones/Butcher).
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l) // 451
    month = (h + l - 7 * m + 114) // 31
    day = (h + l - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


def holiday_dates(preset: str, years, extra=()) -> set[dt.date]:
    """Holiday dates for a preset ('' for none) over `years`, plus extra 'YYYY-MM-DD' or 'MM-DD' entries."""
    out: set[dt.date] = set()
    for y in years:
        if preset:
            for md in _FIXED[preset]:
                out.add(dt.date.fromisoformat(f"{y}-{md}"))
            out.add(_easter(y) + dt.timedelta(days=1))
        for e in extra:
            if e == "02-29" and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
                continue  # a leap day every year it exists
            out.add(dt.date.fromisoformat(e if len(e) == 10 else f"{y}-{e}"))
    return out


class Calendar:
    """Maps epoch seconds to local day numbers, day kinds and time of day."""

    def __init__(self, timezone: str = "UTC", holiday_preset: str = "", holidays=(), rest_weekdays=DEFAULT_REST,
                 partial_weekdays=DEFAULT_PARTIAL):
        if holiday_preset and holiday_preset not in _FIXED:
            raise ValueError(f"unknown holiday preset {holiday_preset!r}; known: {', '.join(PRESETS)}")
        for e in holidays:
            dt.date.fromisoformat(e if len(e) == 10 else f"2000-{e}")  # raises ValueError on a typo
        check_week(rest_weekdays, partial_weekdays)
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self.holiday_preset = holiday_preset
        self.holidays = tuple(holidays)
        self.rest_weekdays, self.partial_weekdays = tuple(rest_weekdays), tuple(partial_weekdays)
        # day kind by weekday, Monday first
        self._kinds = np.array([RESTDAY if d in self.rest_weekdays else SATURDAY if d in self.partial_weekdays
                                else WORKDAY for d in WEEKDAYS], dtype=np.int64)
        self._single: dict = {}  # per-day answers for one-row predicts, which ask the same day all day

    @property
    def week(self) -> tuple:
        """The rest and partial weekdays, sorted Monday first: () for the Saturday-Sunday week."""
        rest, partial = (tuple(d for d in WEEKDAYS if d in days) for days in (self.rest_weekdays,
                                                                              self.partial_weekdays))
        return () if (rest, partial) == (DEFAULT_REST, DEFAULT_PARTIAL) else (rest, partial)

    @property
    def settings(self) -> tuple:
        """What the features read days and hours by: a model fitted under other settings reads them shifted. The
        Saturday-Sunday week adds nothing, so a model stored before the week could be set is still served."""
        week = self.week
        return (self.timezone, self.holiday_preset, tuple(sorted(set(self.holidays)))) + ((week,) if week else ())

    def __getstate__(self):
        return {"timezone": self.timezone, "holiday_preset": self.holiday_preset, "holidays": self.holidays,
                "rest_weekdays": self.rest_weekdays, "partial_weekdays": self.partial_weekdays}

    def __setstate__(self, state):
        self.__init__(**state)

    def _offset_seconds(self, t: np.ndarray) -> np.ndarray:
        """UTC offset at epoch seconds t, looked up per quarter hour: every zone changes its clocks on
        a quarter hour of UTC, not all on a whole hour (Adelaide and St John's on a half hour)."""
        uniq, inv = np.unique(np.asarray(t, dtype=np.int64) // _STEP, return_inverse=True)
        offs = np.array([_utcoffset(self._tz, int(q)) for q in uniq], dtype=np.int64)
        return offs[inv]

    def local_seconds(self, t: np.ndarray) -> np.ndarray:
        """Epoch seconds shifted to wall-clock seconds (so // 86400 is the local day number)."""
        t = np.asarray(t, dtype=np.int64)
        if self.timezone == "UTC":
            return t
        return t + self._offset_seconds(t)

    def days_back(self, ks: np.ndarray, days) -> np.ndarray:
        """Minute numbers at the same wall-clock time `days` local days before minutes ks: across a
        daylight-saving change that is 23 or 25 hours a day back, not 24."""
        ks = np.asarray(ks, dtype=np.int64)
        back = ks - np.asarray(days, dtype=np.int64) * 1440
        if self.timezone == "UTC":
            return back
        shift = self._offset_seconds(ks * 60) - self._offset_seconds(back * 60)
        return back + shift // 60

    def day_kind(self, days: np.ndarray) -> np.ndarray:
        """Kind of each local day number: WORKDAY, SATURDAY or RESTDAY (Sunday or holiday)."""
        days = np.asarray(days, dtype=np.int64)
        kind = self._kinds[(days + 3) % 7]  # 1970-01-01 was a Thursday; Monday = 0
        if (self.holiday_preset or self.holidays) and days.size:
            lo, hi = int(days.min()), int(days.max())
            hol = _holiday_days(self.holiday_preset, _date(lo).year, _date(hi).year, self.holidays)
            kind = np.where(np.isin(days, hol), RESTDAY, kind)
        return kind

    def _one_day(self, fn, days, *args) -> np.ndarray:
        key = (fn.__name__, int(days[0]), args)
        hit = self._single.get(key)
        if hit is None:
            if len(self._single) > 1024:
                self._single.clear()
            hit = self._single[key] = fn(days, *args)
        return hit.copy()

    def same_kind_offsets(self, days: np.ndarray, min_back: int, max_back: int = 21) -> np.ndarray:
        """Days back (>= min_back) to the latest earlier day of the same kind; max_back if none."""
        days = np.asarray(days, dtype=np.int64)
        if days.size == 1:
            return self._one_day(self._same_kind_offsets, days, min_back, max_back)
        return self._same_kind_offsets(days, min_back, max_back)

    def _same_kind_offsets(self, days: np.ndarray, min_back: int, max_back: int) -> np.ndarray:
        uniq, inv = np.unique(days, return_inverse=True)
        lo = int(uniq.min()) - max_back if uniq.size else 0
        span = np.arange(lo, int(uniq.max()) + 1) if uniq.size else np.arange(0)
        kinds = self.day_kind(span)
        out = np.full(uniq.shape, max_back, dtype=np.int64)
        found = np.zeros(uniq.shape, dtype=bool)
        k_target = kinds[uniq - lo]
        for back in range(min_back, max_back):
            hit = ~found & (kinds[uniq - back - lo] == k_target)
            out[hit] = back
            found |= hit
        return out[inv]

    def recent_same_kind(self, days: np.ndarray, n: int, max_back: int = 42) -> np.ndarray:
        """(len(days), n) days back to the n latest earlier days of the same kind; max_back pads."""
        days = np.asarray(days, dtype=np.int64)
        if days.size == 1:
            return self._one_day(self._recent_same_kind, days, n, max_back)
        return self._recent_same_kind(days, n, max_back)

    def _recent_same_kind(self, days: np.ndarray, n: int, max_back: int) -> np.ndarray:
        uniq, inv = np.unique(days, return_inverse=True)
        out = np.full((uniq.size, n), max_back, dtype=np.int64)
        if not uniq.size:
            return out[inv]
        lo = int(uniq.min()) - max_back
        kinds = self.day_kind(np.arange(lo, int(uniq.max()) + 1))
        k_target = kinds[uniq - lo]
        filled = np.zeros(uniq.size, dtype=np.int64)
        for back in range(1, max_back):
            hit = (filled < n) & (kinds[uniq - back - lo] == k_target)
            out[hit, filled[hit]] = back
            filled += hit
        return out[inv]


def check_week(rest_weekdays, partial_weekdays) -> None:
    """ValueError naming what is wrong with a week's rest and partial weekdays."""
    for name, days in (("rest_weekdays", rest_weekdays), ("partial_weekdays", partial_weekdays)):
        wrong = [d for d in days if d not in WEEKDAYS]
        if wrong:
            raise ValueError(f"{name}: {wrong[0]!r} is not a weekday; weekdays are {', '.join(WEEKDAYS)}")
    both = [d for d in WEEKDAYS if d in rest_weekdays and d in partial_weekdays]
    if both:
        raise ValueError(f"{both[0]} is in both rest_weekdays and partial_weekdays (partial_weekdays is "
                         f"[\"saturday\"] unless set: set it too, e.g. partial_weekdays = [])")
    if len(set(rest_weekdays) | set(partial_weekdays)) == 7:
        raise ValueError("rest_weekdays and partial_weekdays leave no working weekday")


@lru_cache(maxsize=256)
def _holiday_days(preset: str, first_year: int, last_year: int, extra: tuple) -> np.ndarray:
    dates = holiday_dates(preset, range(first_year, last_year + 1), extra)
    return np.array(sorted((d - dt.date(1970, 1, 1)).days for d in dates), dtype=np.int64)


_STEP = 900


@lru_cache(maxsize=262144)  # three years of quarter hours
def _utcoffset(tz: ZoneInfo, quarter: int) -> int:
    return int(dt.datetime.fromtimestamp(quarter * _STEP, tz).utcoffset().total_seconds())


def _date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=day)

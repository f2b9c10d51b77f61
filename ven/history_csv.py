"""/api/history.csv: the /api/history body (see ven.history) as one CSV row per minute, for a spreadsheet
and for `edge-gateway forecast-replay --csv FILE --time-column minute --value-column power_kw`.

Made from the body /api/history answers (after to_json), never from the store again: the two cannot differ.
"""
from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import math
import time
from typing import Any

from ven.history import epoch

FORECAST_KEYS = ("forecast_15", "forecast_60")  # the body's keys for horizons_minutes[0] and [1]


def _kw(value: Any) -> str:
    if type(value) not in (float, int) or not math.isfinite(value):  # after to_json: a number or None
        return ""
    # four decimals (the gateway keeps three): forecast-replay, like any reader that refuses to guess,
    # takes a file whose every value looks like 96.412 for one that may group thousands, and asks for --decimal
    return f"{value:.4f}"


def _flag(value: Any) -> str:
    return "" if value is None else str(int(bool(value)))


def levels_by_minute(minutes: list[float], events: list[dict]) -> tuple[list[int], list[bool]]:
    """(level, opted out) of each minute: the highest level of the body's event intervals in force at any
    time during the minute (0 none), and whether every interval at that level was opted out then (an
    answer that changed within the minute counts as followed). An interval still open runs to the end."""
    level = [0] * len(minutes)
    out = [False] * len(minutes)
    for e in events or []:
        lv, start, end = e.get("level"), epoch(e.get("start")), epoch(e.get("end"))
        if not isinstance(lv, (int, float)) or lv <= 0 or start is None:
            continue
        lv = int(round(lv))
        opted_out = e.get("opt") == "optOut"
        # minute m is [m, m + 60): the interval touches it when start < m + 60 and (no end or end > m)
        first = bisect.bisect_right(minutes, start - 60)
        stop = len(minutes) if end is None else bisect.bisect_left(minutes, end)
        for i in range(first, stop):
            if lv > level[i]:
                level[i], out[i] = lv, opted_out
            elif lv == level[i]:
                out[i] = out[i] and opted_out
    return level, out


def _forecasts(body: dict) -> list[tuple[str, int]]:
    """(body key, horizon in minutes) of each forecast series: the keys are fixed, the horizons configured."""
    return list(zip(FORECAST_KEYS, body.get("horizons_minutes") or [15, 60]))


def history_csv(body: dict) -> str:
    """The CSV text of a JSON-ready /api/history body: a header and one row per minute."""
    minutes = [float(m) for m in body.get("minutes") or []]
    forecasts = _forecasts(body)
    columns = ["minute", "power_kw", "demand_kw", *(f"forecast_{h}_kw" for _, h in forecasts),
               "high_load", "low_load", "event_level", "opted_out"]
    kw_series = [body.get("power_kw"), body.get("demand_kw"), *(body.get(key) for key, _ in forecasts)]
    level, opted_out = levels_by_minute(minutes, body.get("events"))

    def column(series, cell):
        # a series shorter than "minutes" (a view's bug) leaves its last cells empty rather than the file unreadable
        values = list(series or [])[:len(minutes)]
        return [cell(v) for v in values] + [""] * (len(minutes) - len(values))
    columns_text = [[time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m)) for m in minutes],
                    *(column(s, _kw) for s in kw_series), column(body.get("high_load"), _flag),
                    column(body.get("low_load"), _flag), level, [int(o) for o in opted_out]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(columns)
    w.writerows(zip(*columns_text))
    return buf.getvalue()


def history_filename(body: dict, hours: float, now: float) -> str:
    """edge-gateway-history-<first minute, UTC>-<hours>h.csv, without characters a file system refuses."""
    minutes = body.get("minutes") or []
    start = float(minutes[0]) if minutes else now - hours * 3600
    stamp = dt.datetime.fromtimestamp(start, dt.timezone.utc).strftime("%Y%m%dT%H%MZ")
    return f"edge-gateway-history-{stamp}-{hours:g}h.csv"

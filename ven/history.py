"""The /api/history body: the minutes of power, demand, forecasts and load flags, and the event levels as
they ran, from the forecaster store's history and the schedule's events (app.py reads them, off the loop);
what lies ahead from the forecast service's latest forecast, held in memory, and the schedule's events.

GET /api/history?hours=24 -> view.history(hours), a dict shaped like (times: epoch seconds, UTC):

    {
      "minutes": [1763769600, 1763769660, ...],    # start of each minute, ascending, one per minute
      "power_kw":    [95.1, null, ...],            # 1-minute average power; null where no reading
      "demand_kw":   [94.8, ...],                   # 15-minute demand (average of the known minutes of the 15 ending here)
      "forecast_15": [93.0, ...],                   # forecast for this minute's demand issued 15 min before
      "forecast_60": [97.2, ...],                   # ... issued 60 min before; null where none was issued
      "horizons_minutes": [15, 60],                 # the horizons behind forecast_15 / forecast_60
      "high_load":   [false, true, null, ...],      # flag state during each minute
      "low_load":    [false, ...],
      "high_threshold_kw": 120.0,                   # null while not yet known
      "low_threshold_kw": 60.0,
      "events": [{"start": 1763780000, "end": 1763783600, "level": 2, "event_id": "e1", "opt": "optIn"}],
                                                    # one entry per SIMPLE interval above level 0
                                                    # and per answer: an interval is cut where the
                                                    # answer changed, "opt" is the one in force then;
                                                    # every event overlapping the hours (ended ones are
                                                    # kept 35 days, /api/status lists a day of them)
      "now": 1763769690.4,                          # when the body was made: "minutes" end with its minute
      "ahead": {"issued_at": 1763769665.0,          # the latest forecast, as the BAS reads it now
                "forecasts": [{"horizon": 15, "target": 1763770565.0, "minute": 1763770560, "kw": 96.1},
                              {"horizon": 60, "target": 1763773265.0, "minute": 1763773260, "kw": 99.8}]},
      "upcoming": [{"start": 1763771400, "end": 1763775000, "level": 2, "event_id": "e2", "opt": "optIn",
                    "upcoming": true}]
    }

All per-minute arrays have the length of "minutes". An interval still open has "end": null.

What lies ahead is kept out of the per-minute arrays and out of "events", so that they still end at now
and hold only what ran (the CSV, made from them, never has a row after now):
- "ahead" is the latest issued forecast, the one the forecast service holds in memory and the BAS points
  carry (latest_forecast: /api/status's forecaster.last_forecast, {"issued_at", "demand_kw": {h: kw}}), not
  one read back from storage: it is there while storage.path cannot be written, and it is /api/status's.
  One entry per horizon with a number: "target" is the end of the demand window it forecasts (issue +
  horizon), "minute" the start of the minute forecast_15 / forecast_60 will show it at once that minute
  comes (those arrays are the store's, with the forecasts it did not take yet, kept in memory). null when no
  forecast was issued, when it has no number (made without power: the points are in fault), when it is
  older than the flags' staleness (flag_stale_seconds: the forecaster stopped), or when the power input is
  stale now (the BAS reads the forecast points in fault then: input_stale=True).
- "upcoming" lists the SIMPLE intervals (shaped as in "events", each with "upcoming": true) that start
  after now and within the longest horizon: what the chart shades past now. A cancelled event is not
  there; an interval that started already is in "events". Interval times are the ones the gateway runs:
  an event randomized by its VTN (tolerance startafter) comes with its drawn offset added already
  (Event.describe), so the chart shades where the BAS will see the level change, not the nominal start.
build_history() makes this body from the forecaster store's history, the schedule's events and the latest
forecast.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

from .events import rank_of


def epoch(value: Any) -> float | None:
    """Epoch seconds from a time as the views give it: a number, a datetime (naive is UTC) or ISO text."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _simple_intervals(event: dict, zero: bool = False) -> list[tuple[float | None, float | None, int]]:
    """(start, end, level) of each SIMPLE interval with a level above 0 (or of 0 too, with `zero`): an event of
    levels 1, 2, 3 is shaded three ways, as the BAS saw it. An event given only a level (no signals) is one
    interval."""
    out = []
    for sig in event.get("signals") or []:
        if str(sig.get("name", "")).upper() != "SIMPLE":
            continue  # a price or other signal never drives ADR-Event-Level
        for iv in sig.get("intervals") or []:
            v = iv.get("payload", iv.get("value"))
            start = epoch(iv.get("start"))
            end = epoch(iv.get("end")) if iv.get("end") else (
                start + iv["duration_seconds"] if start is not None and iv.get("duration_seconds") else None)
            if isinstance(v, (int, float)) and (v > 0 or zero and v == 0):
                out.append((start, end, int(v)))
    if not event.get("signals") and isinstance(event.get("level"), (int, float)):
        out.append((epoch(event.get("start")), epoch(event.get("end")), int(event["level"])))
    return out


def _opt_log(event: dict) -> list[tuple[float | None, str]]:
    """(since, opt) of each answer the event had, oldest first; without "opt_changes" (a view that does
    not keep them) its answer of now is the only one known."""
    log = [(epoch(c.get("at")), str(c.get("opt", ""))) for c in event.get("opt_changes") or []]
    return sorted(log, key=lambda c: c[0] or 0.0) or [(None, event.get("opt", ""))]


def _split_by_opt(start: float, stop: float | None,
                  answers: list[tuple[float | None, str]]) -> list[tuple[float, float | None, str]]:
    """The span cut where the answer changed, each part with the answer in force then (before the first
    known answer, the first one: an event is answered when it arrives, before it starts)."""
    parts = []
    opt = answers[0][1]
    for at, answer in answers[1:]:
        if at is None or at <= start:
            opt = answer
        elif stop is None or at < stop:
            if answer != opt:
                parts.append((start, at, opt))
                start, opt = at, answer
    parts.append((start, stop, opt))
    return parts


def _ahead(latest: dict | None, horizons: tuple[int, int], now: float, stale_seconds: float) -> dict | None:
    """The "ahead" entry: each horizon's number of the latest forecast, or None (the module docstring)."""
    if not latest or latest.get("issued_at") is None:
        return None
    issued_at = float(latest["issued_at"])
    if now - issued_at > stale_seconds:
        return None
    demand = latest.get("demand_kw") or {}
    out = []
    for h in sorted(horizons):
        kw = demand.get(h, demand.get(str(h)))     # /api/status's keys are text
        if isinstance(kw, (int, float)) and math.isfinite(kw):
            out.append({"horizon": h, "target": issued_at + h * 60,
                        "minute": (math.ceil((issued_at + h * 60) / 60) - 1) * 60, "kw": round(float(kw), 3)})
    return {"issued_at": issued_at, "forecasts": out} if out else None


def build_history(now: float, hours: float, store: dict, events: list[dict] = (),
                  horizons: tuple[int, int] = (15, 60), flag_stale_seconds: float = 300.0,
                  input_stale: bool = False, latest_forecast: dict | None = None) -> dict:
    """Shape the /api/history body (see the module docstring) from the forecaster store's history
    ({"power": {"time", "kw"}, "forecasts": {h: {"target_time", "forecast_kw"}}, "flags": {"time",
    "high_load", "low_load", "high_threshold_kw", "low_threshold_kw"}}), the schedule's events and the
    forecast service's latest forecast (latest_forecast, plain values as /api/status gives them; None: none).

    Demand at a minute is the mean of the known 1-minute powers of the 15 minutes ending with it
    (null when none is known; history back-filled at 15-minute resolution so becomes a step line); a forecast with target time T belongs to the minute ending at T;
    the flags at a minute are those of the last forecast issued by its end, if not stale; "ahead" (from
    latest_forecast alone) and "upcoming" are what lies after now (the module docstring).
    """
    end_minute = int(now // 60)
    n = max(1, int(round(hours * 60)))
    first = end_minute - n + 1
    minutes = [(first + i) * 60 for i in range(n)]
    power: list[float | None] = [None] * n
    p = store.get("power") or {}
    for t, kw in zip(p.get("time") or [], p.get("kw") or []):
        i = math.ceil(t / 60) - 1 - first  # a power at t belongs to the minute ending at ceil(t / 60) * 60
        if 0 <= i < n and kw is not None and math.isfinite(kw):
            power[i] = round(float(kw), 3)
    demand: list[float | None] = []
    for i in range(n):
        window = [v for v in power[max(0, i - 14):i + 1] if v is not None]
        demand.append(round(sum(window) / len(window), 3) if window else None)
    forecasts = store.get("forecasts") or {}
    series = {}
    for key, horizon in zip(("forecast_15", "forecast_60"), horizons):
        values: list[float | None] = [None] * n
        f = forecasts.get(horizon) or forecasts.get(str(horizon)) or {}
        for target, kw in zip(f.get("target_time") or [], f.get("forecast_kw") or []):
            i = math.ceil(target / 60) - 1 - first  # the demand window ending at ceil(target / 60) * 60
            if 0 <= i < n and kw is not None and math.isfinite(kw):
                values[i] = round(float(kw), 3)
        series[key] = values
    fl = store.get("flags") or {}
    times = fl.get("time") or []
    high: list[bool | None] = [None] * n
    low: list[bool | None] = [None] * n
    j = -1
    for i, start in enumerate(minutes):
        while j + 1 < len(times) and times[j + 1] < start + 60:
            j += 1
        if j >= 0 and start + 60 - times[j] <= flag_stale_seconds + 60:
            high[i] = bool(fl["high_load"][j])
            low[i] = bool(fl["low_load"][j])

    def last(key: str) -> float | None:
        vals = [v for v in fl.get(key) or [] if v is not None]
        return vals[-1] if vals else None

    shaded, upcoming = _ran_and_upcoming(events, now, minutes[0], now + max(horizons) * 60)
    return {"minutes": minutes, "power_kw": power, "demand_kw": demand, **series,
            "horizons_minutes": list(horizons), "high_load": high, "low_load": low,
            "high_threshold_kw": last("high_threshold_kw"), "low_threshold_kw": last("low_threshold_kw"),
            "events": shaded, "now": now,
            "ahead": None if input_stale else _ahead(latest_forecast, horizons, now, flag_stale_seconds),
            "upcoming": sorted(upcoming, key=lambda e: (e["start"], e["event_id"]))}


def _ran_and_upcoming(events: list[dict], now: float, since: float, ahead_until: float,
                      zero: bool = False) -> tuple[list, list]:
    """The "events" and "upcoming" entries (the module docstring): what ran after `since`, cut where the
    answer changed, and what starts after now and up to ahead_until (level 0 intervals too, with `zero`)."""
    shaded, upcoming = [], []
    for ev in events:
        if ev.get("test_event") or ev.get("for_this_ven") is False:
            continue  # neither a test event nor one whose targets name other VENs drives ADR-Event-Level
        # nothing ran here before the event reached the gateway (late delivery, or over on arrival)
        known_from = epoch(ev.get("received_at"))
        ran_until = None
        if ev.get("status") == "cancelled":
            ran_until = epoch(ev.get("cancelled_at"))
            if ran_until is None:  # cancelled before it reached the gateway: it never ran here
                continue
        modified = epoch(ev.get("modified_at"))  # before it, what ran under earlier definitions
        ran = [(epoch(r.get("start")), epoch(r.get("end")), int(r.get("payload", 0))) for r in ev.get("ran_before") or []
               if zero or r.get("payload", 0) > 0]
        now_defined = [(max(start, modified) if modified is not None and start is not None else start, stop, level)
                       for start, stop, level in _simple_intervals(ev, zero)]
        answers = _opt_log(ev)
        for start, stop, level in ran + now_defined:
            if ran_until is not None:
                stop = ran_until if stop is None else min(stop, ran_until)
            if start is None or start > ahead_until:
                continue
            if start > now:
                # a cancellation ends it before it starts, unless its randomized end (2.0b rule 65) is still ahead
                if ran_until is None or ran_until > start:
                    upcoming.append({"start": start, "end": stop, "level": level,
                                     "event_id": ev.get("event_id", ""), "opt": answers[-1][1], "upcoming": True})
                continue
            if known_from is not None:
                start = max(start, known_from)
                if stop is not None and stop <= start:
                    continue
            for part_start, part_stop, opt in _split_by_opt(start, stop, answers):
                if part_stop is not None and (part_stop < since or part_stop <= part_start):
                    continue
                shaded.append({"start": part_start, "end": part_stop, "level": level,
                               "event_id": ev.get("event_id", ""), "opt": opt})
    return shaded, upcoming


def curtailed_spans(events: list[dict], now: float, since: float = 0.0) -> list[tuple[float, float | None]]:
    """(start, end) of the times after `since`, past or to come, when the events put ADR-Event-Level above 0 while
    the building was not opted out: when the BAS sheds load (end None: open-ended), for the forecaster to keep out of
    what it learns from. The level is the schedule's: of overlapping events the highest-priority one's, of equal
    priorities the highest level, so a level-0 event of higher priority holds the building at 0 through a lower one.
    A running event's later intervals are in: its next one at the same level changes nothing the schedule publishes.
    Times that follow one another are one span."""
    ran, ahead = _ran_and_upcoming(events, now, since, math.inf, zero=True)
    rank = {ev.get("event_id", ""): rank_of(ev.get("priority")) for ev in events}
    parts = sorted((p["start"], math.inf if p["end"] is None else p["end"], rank.get(p["event_id"], math.inf),
                    p["level"]) for p in ran + ahead if p["opt"] != "optOut" and p["start"] is not None)
    cuts = sorted({t for start, end, *_ in parts for t in (start, end)})
    out: list[list[float]] = []
    active: list[tuple] = []
    taken = 0
    for a, b in zip(cuts, cuts[1:]):
        while taken < len(parts) and parts[taken][0] <= a:
            active.append(parts[taken])
            taken += 1
        active = [p for p in active if p[1] > a]
        if not active:
            continue
        best = min(r for _, _, r, _ in active)
        if max(level for _, _, r, level in active if r == best) <= 0:
            continue
        if out and out[-1][1] >= a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, None if b == math.inf else b) for a, b in out]

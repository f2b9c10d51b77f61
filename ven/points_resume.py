"""What the run before left on the forecast and meter points, shown from the device's first answer.

The forecaster's first cycle needs numpy and scikit-learn, which are imported after the BACnet device answers (so
the BAS sees the device within a second or two), and the meter's first read needs the whole start behind it: for the
seconds until then the points read 0 kW with statusFlags fault, and a BAS trend or COV subscriber that ignores
statusFlags recorded a dip to 0 kW at every restart, a sequence reading high-load-conditions saw it off. The last
forecast the run before issued and stored, and the last meter reading it took, are read here with plain sqlite3 (no
forecaster import: its package brings numpy) before the device answers. The forecaster's tables are its own
(forecaster/store.py); this reads the two rows it needs and nothing else.
"""
from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

# The last good meter reading of a run that stopped cleanly ({"kw", "at"}), "" once this run has read the meter: a
# crash after that leaves no reading older than the file's own to show at the next start
METER_KEPT = "meter_kept_reading"


@dataclass(frozen=True)
class LastForecast:
    """The run before's last issue, shaped as app._show_forecast takes a forecaster's Forecast."""
    issued_at: float
    demand_kw: dict[int, float | None]
    rate_kw_per_min: float | None
    high_load: bool
    low_load: bool
    high_threshold_kw: float | None
    low_threshold_kw: float | None
    newest_power_at: float | None   # as the forecaster's newest_sample_at reads after loading the stored minutes


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def last_forecast(path: str | Path, now: float) -> LastForecast | None:
    """The last forecast stored in `path` issued before `now`, or None (no file, none issued, unreadable: the points
    then start in fault as before). Milliseconds: three lookups by primary key."""
    try:
        uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=0.2)) as db:
            issue = db.execute("SELECT issued_at, rate_kw_per_min, high_load, low_load, high_threshold_kw, "
                               "low_threshold_kw FROM forecast_issue WHERE issued_at <= ? ORDER BY issued_at DESC "
                               "LIMIT 1", (now,)).fetchone()
            if issue is None:
                return None
            demand = db.execute("SELECT horizon_minutes, forecast_kw FROM forecast_demand WHERE issued_at = ?",
                                (issue[0],)).fetchall()
            # the newest minute the forecaster would load (forecaster/store.py _usable), at its start as load_minutes
            # dates it: a few rows, as a hand-edited or damaged newest one is skipped there
            minutes = db.execute("SELECT minute, sum_kw, count FROM forecast_minute ORDER BY minute DESC "
                                 "LIMIT 8").fetchall()
    except (sqlite3.Error, OSError, ValueError):
        return None
    newest = next((float(k - 1) * 60.0 for k, total, n in minutes
                   if isinstance(k, int) and _number(total) is not None and isinstance(n, int) and n > 0), None)
    issued_at, rate, high, low, high_kw, low_kw = issue
    if _number(issued_at) is None:
        return None
    return LastForecast(float(issued_at), {h: _number(kw) for h, kw in demand if isinstance(h, int)}, _number(rate),
                        bool(high), bool(low), _number(high_kw), _number(low_kw), newest)


def kept_reading(text: str | None) -> float | None:
    """The kW METER_KEPT holds, or None (none kept, or this run has read the meter)."""
    try:
        kw = json.loads(text)["kw"] if text else None
    except (ValueError, TypeError, KeyError):
        return None
    return _number(kw)


def keep_reading(kw: float, at: float) -> str:
    return json.dumps({"kw": kw, "at": at})

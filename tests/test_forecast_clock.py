"""ForecastService across wall-clock steps, with a real SQLite file and an injected wall clock:
a box that boots at 2020 and then gets NTP, one that ran an hour fast, a clock years ahead."""
from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time

import numpy as np
import pytest
from waiting import FIRST_CYCLE_SECONDS, eventually

from forecaster import DemandForecaster
from forecaster.store import ForecastStore
from ven import forecast_service
from ven.config import ForecasterConfig
from ven.forecast_service import ForecastService

BOOT_2020 = 1577836800.0  # 2020-01-01 00:00 UTC: a box without a battery clock


def _stored_history(path: str, end: float, hours: float = 36.0) -> int:
    """`hours` of an office-like load every 5 min up to `end`, saved as the gateway would have.
    36 h: enough for percentile thresholds (a day), too little for a fit (48 h) to start a child."""
    t = end - np.arange(0, hours * 3600, 300.0)[::-1]
    tod = (t % 86400) / 3600
    fc = DemandForecaster()
    fc.seed(t, 100 + 200 * ((tod > 8) & (tod < 18)))
    return ForecastStore(path).save_minutes(*fc.drain_dirty())


def _stored_minutes(path: str, since: float, until: float | None = None) -> int:
    until_k = 2**62 if until is None else math.ceil(until / 60)
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM forecast_minute WHERE minute >= ? AND minute <= ?",
                          (int(since // 60), until_k)).fetchone()[0]


@pytest.mark.timeout(60)
async def test_a_boot_at_2020_then_ntp_serves_the_stored_history_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.forecast_service")
    path = str(tmp_path / "g.sqlite")
    real = time.time()
    stored = _stored_history(path, real - 60)
    clock = [BOOT_2020]
    published = []
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=published.append,
                          clock=lambda: clock[0])
    await svc.start()
    try:
        assert svc.status()["history_minutes"] == stored
        svc.on_meter(BOOT_2020, 100.0)
        await eventually(lambda: published and published[-1].issued_at == BOOT_2020, FIRST_CYCLE_SECONDS,
                         "a forecast at 2020")
        clock[0] = real = time.time()                           # NTP steps the clock right
        svc.on_meter(real, 150.0)
        await eventually(lambda: svc.status()["history_minutes"] >= stored, 10, "the stored history back")
        await eventually(lambda: published[-1].issued_at == real and published[-1].high_threshold_kw is not None,
                         10, "thresholds from the stored history")
        assert published[-1].low_threshold_kw is not None and published[-1].demand_kw[15] is not None
        assert svc.status()["history_first"] > real - 2 * 86400     # the 2020 minute is not in it
    finally:
        await svc.stop()
    assert _stored_minutes(path, real - 2 * 86400) >= stored          # nothing the 2020 period did lost it
    steps = [r.getMessage() for r in caplog.records if "wall clock" in r.getMessage()]
    assert len(steps) == 2 and "went back" in steps[0] and "jumped ahead" in steps[1], steps
    assert any(f"reloaded {stored} stored minutes" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
async def test_a_clock_stepped_back_an_hour_keeps_forecasting(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.forecast_service")
    real = time.time()
    clock = [real + 3600]                                       # booted an hour fast
    published = []
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), str(tmp_path / "g.sqlite"),
                          publish=published.append, clock=lambda: clock[0])
    await svc.start()
    try:
        fast = [real + 3600 - 1200 + i * 10 for i in range(120)]   # 20 minutes stamped by the fast clock
        for t in fast:
            svc.on_meter(t, 100.0)
        await eventually(lambda: published and published[-1].demand_kw[15] == pytest.approx(100.0),
                         FIRST_CYCLE_SECONDS, "fast")
        clock[0] = real                                          # NTP: an hour back
        for dt_ in (-20, -10, 0):
            svc.on_meter(real + dt_, 200.0)
        await eventually(lambda: published[-1].issued_at == real, 10, "a forecast after the step")
        await eventually(lambda: published[-1].demand_kw[15] == pytest.approx(200.0), 10, "readings taken again")
        st = svc.status()
        assert st["rejected_samples"] == 0 and st["history_last"] < real
    finally:
        await svc.stop()
    messages = [r.getMessage() for r in caplog.records]
    steps = [m for m in messages if "wall clock" in m]
    dropped = len({math.ceil(t / 60) for t in fast})
    assert len(steps) == 1 and "went back 60 min" in steps[0] and f"{dropped} minutes" in steps[0], steps
    assert not any("rejecting" in m for m in messages)


@pytest.mark.timeout(60)
async def test_auto_source_falls_back_to_the_meter_after_the_clock_went_back(tmp_path):
    real = time.time()
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="auto", input_stale_seconds=0.3),
                          str(tmp_path / "g.sqlite"), publish=lambda f: None, clock=time.time)
    svc.on_input_power(real + 3600, 100.0)                      # the BAS wrote while the clock was an hour fast
    svc.on_meter(real, 200.0)                                    # a second later the clock went back
    assert svc.status()["active_source"] == "bacnet_input"      # a step is no silence of the BAS
    await asyncio.sleep(0.4)                                     # then it stopped
    svc.on_meter(real + 0.4, 200.0)
    assert svc.status()["active_source"] == "meter"
    svc.on_input_power(real + 1, 150.0)                          # a BAS writing on the right clock serves again
    svc.on_meter(real + 1.1, 999.0)
    assert svc.status()["active_source"] == "bacnet_input"


@pytest.mark.timeout(30)
async def test_a_step_ahead_is_no_silence_of_the_bas(tmp_path, caplog):
    # the freshness of the BAS input went by its wall-clock stamps: any step said "forecaster now learns from meter
    # (no BAS input taken for 300 s)" of a BAS that wrote a second before, and ten minutes later it switched back
    caplog.set_level(logging.INFO, logger="ven.forecast_service")
    real = time.time()
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="auto", input_stale_seconds=300),
                          str(tmp_path / "g.sqlite"), publish=lambda f: None, clock=time.time)
    svc.on_input_power(real, 100.0)
    svc.on_meter(real + 600, 200.0)                              # the clock stepped 10 min ahead
    svc.on_input_power(real + 603, 110.0)
    assert svc.status()["active_source"] == "bacnet_input"
    assert not [r.getMessage() for r in caplog.records if "learns from meter" in r.getMessage()]


@pytest.mark.timeout(60)
async def test_a_clock_years_ahead_does_not_prune_the_history(tmp_path, monkeypatch):
    monkeypatch.setattr(forecast_service, "PRUNE_EVERY_S", 0.0)   # prune every cycle, the first one too
    path = str(tmp_path / "g.sqlite")
    real = time.time()
    stored = _stored_history(path, real - 60)
    ForecastStore(path).save_minutes([int((real - 60 * 86400) // 60)], [10.0], [1])   # older than kept
    clock = [real]
    published = []
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=published.append,
                          clock=lambda: clock[0])
    await svc.start()
    try:
        await eventually(lambda: _stored_minutes(path, 0) == stored, 10, "the old minute pruned")
        clock[0] = ahead = real + 5 * 365 * 86400                # a bad time source: five years ahead
        svc.on_meter(ahead, 100.0)
        await eventually(lambda: len([f for f in published if f.issued_at == ahead]) > 5, 10, "cycles ahead")
        assert _stored_minutes(path, real - 2 * 86400, real) == stored
    finally:
        await svc.stop()


def _stored_rows(path: str, table: str, before: float) -> int:
    column = "minute * 60" if table == "forecast_minute" else "issued_at"
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} < ?", (before,)).fetchone()[0]


def _old_rows(path: str, at: float) -> None:
    """A minute of history and an issued forecast from `at`: older than the forecaster keeps."""
    from forecaster.core import Forecast

    store = ForecastStore(path)
    store.save_minutes([int(at // 60)], [10.0], [1])
    store.record_forecast(Forecast(issued_at=at, demand_kw={15: 10.0, 60: 10.0}, rate_kw_per_min=0.0, high_load=False,
                                   low_load=False, high_threshold_kw=None, low_threshold_kw=None, model="persistence"))


@pytest.mark.timeout(60)
async def test_a_gateway_restarted_within_the_hour_still_prunes_at_start(tmp_path):
    # The hourly prune waits an hour after start: a gateway restarted more often (a crash loop, a watchdog)
    # never pruned, and its file grew by a day of history and forecasts every day.
    path = str(tmp_path / "g.sqlite")
    real = time.time()
    stored = _stored_history(path, real - 60)
    _old_rows(path, real - 60 * 86400)
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=lambda f: None)
    await svc.start()
    await svc.stop()
    kept_since = real - 2 * 86400
    assert [_stored_rows(path, t, kept_since) for t in ("forecast_minute", "forecast_issue", "forecast_demand")] \
        == [0, 0, 0]
    assert _stored_minutes(path, kept_since) == stored


@pytest.mark.timeout(60)
async def test_a_start_with_the_clock_years_ahead_prunes_nothing_kept(tmp_path):
    path = str(tmp_path / "g.sqlite")
    real = time.time()
    stored = _stored_history(path, real - 60)
    _old_rows(path, real - 60 * 86400)
    ahead = real + 5 * 365 * 86400
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=lambda f: None,
                          clock=lambda: ahead)
    await svc.start()
    await svc.stop()
    assert _stored_minutes(path, real - 2 * 86400, real) == stored      # by the newest stored minute, not the clock
    assert _stored_rows(path, "forecast_minute", real - 2 * 86400) == 0

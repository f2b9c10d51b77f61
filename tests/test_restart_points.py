"""A restart as a BAS sees it: from the device's first answer the forecast points say the forecast the run before left
(live: its power is minutes old at most) and meter-power its last reading, flagged until the first read; never 0 kW,
nor high-load-conditions off, while the forecaster and the meter start behind them. Runs the real gateway process."""
from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time

import pytest
from bacnet_peer import BacnetPeer, PeerError
from gateway_process import START_S, GatewayProcess, write_config
from waiting import FIRST_CYCLE_SECONDS, eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from forecaster.series import minute_of
from forecaster.store import ForecastStore
from ven.points_resume import METER_KEPT

pytestmark = pytest.mark.timeout(3 * START_S)

KW = 260.0
FORECAST = [P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.HIGH_LOAD, P.HIGH_LOAD_THRESHOLD]
# whose value may be 0 or off by right (a flat last hour, no valley), but not in fault
NOT_IN_FAULT = [P.RATE_OF_CHANGE, P.LOW_LOAD, P.LOW_LOAD_THRESHOLD]
WATCHED = FORECAST + NOT_IN_FAULT + [P.METER_POWER]


def _history(storage, last: int | None = None) -> None:
    """Three days of a daily swing between 100 and 200 kW to minute `last` (the last before now), the last hour at KW:
    a peak, high-load-conditions on."""
    last = minute_of(time.time()) - 1 if last is None else last
    ks = list(range(last - 3 * 1440, last + 1))
    kws = [150 + 50 * math.sin(2 * math.pi * (k % 1440) / 1440) for k in ks]
    kws[-60:] = [KW] * 60
    ForecastStore(str(storage)).save_minutes(ks, kws, [1] * len(ks))


def _kept(storage) -> str | None:
    with contextlib.closing(sqlite3.connect(storage)) as db:
        row = db.execute("SELECT value FROM kv WHERE key = ?", (METER_KEPT,)).fetchone()
    return row and row[0]


async def _read(peer, gw):
    rows = await peer.read_multiple(gw, [(P.BY_NAME[n].object_id, ["presentValue", "statusFlags"]) for n in WATCHED])
    if isinstance(rows, PeerError):
        return None
    return {n: (rows[(P.BY_NAME[n].object_id, "presentValue")], rows[(P.BY_NAME[n].object_id, "statusFlags")][1])
            for n in WATCHED}


async def test_a_restart_shows_the_last_forecast_and_reading_from_the_first_answer(
        tmp_path, free_udp_port, free_tcp_port):
    storage, config = tmp_path / "gw.sqlite", tmp_path / "gw.toml"
    _history(storage)
    bacnet_port = free_udp_port()
    gw = f"127.0.0.1:{bacnet_port}"
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=KW) as meter, \
            BacnetPeer(free_udp_port(), timeout=0.5) as peer:
        # a long cycle: the points the second run shows first are the ones it restored, not a second cycle's
        write_config(config, bacnet_port=bacnet_port, http_port=free_tcp_port(), storage=storage,
                     ven_name="restart-points", meter_port=int(meter.router_address.rpartition(":")[2]),
                     cycle_seconds=60, meter_timeout_seconds=5)
        try:
            gateway.start()

            async def live():
                now = await _read(peer, gw)
                return now if now and not any(fault for _, fault in now.values()) else None
            before = await eventually(live, START_S, "run 1: the forecast and a reading, live")
            assert before[P.HIGH_LOAD][0] == "active" and before[P.FIFTEEN_MIN_FORECAST][0] == pytest.approx(KW)
            assert gateway.stop() == 0, gateway.log()[-3000:]
            assert '"kw": 260.0' in _kept(storage)

            # from before the device answers until the meter's first read: every answer, in order
            gateway.start()
            seen, deadline = [], time.monotonic() + START_S
            while not seen or seen[-1][P.METER_POWER][1]:
                assert time.monotonic() < deadline, (seen[-3:], gateway.log()[-3000:])
                if (now := await _read(peer, gw)) is not None:
                    seen.append(now)
                await asyncio.sleep(0.02)
            # read: a crash from here on leaves no reading older than this run's to show at the next start
            await eventually(lambda: _kept(storage) == "", 10, "the kept reading taken back")
        finally:
            gateway.stop()
    for i, now in enumerate(seen):
        # live, as the run before left them (a model fitted meanwhile may move the kW, never to 0)
        assert all(now[name][0] not in (0.0, "inactive") and not now[name][1] for name in FORECAST), (i, len(seen), now)
        assert not any(now[name][1] for name in NOT_IN_FAULT), (i, len(seen), now)
        # flagged (no read yet) while the meter starts, but the last reading, not 0 kW
        assert now[P.METER_POWER][0] == pytest.approx(KW), (i, now)
    assert "Traceback" not in gateway.log()


async def test_a_forecast_stored_before_a_long_stop_is_shown_flagged_not_as_0(tmp_path, free_udp_port, free_tcp_port):
    # Down longer than forecaster.input_stale_seconds: the last forecast is old news. Shown as a running gateway holds
    # its last one once power stops coming in: readable, flagged, both load flags inactive and flagged; the thresholds
    # rest on the stored history, live.
    from forecaster import Forecast
    from ven.app import Gateway
    from ven.config_load import parse_config

    storage = tmp_path / "gw.sqlite"
    stopped = time.time() - 1200
    _history(storage, minute_of(stopped))
    ForecastStore(str(storage)).record_forecast(Forecast(
        issued_at=stopped, demand_kw={15: 255.0, 60: 250.0}, rate_kw_per_min=1.5, high_load=True, low_load=False,
        high_threshold_kw=240.0, low_threshold_kw=120.0, model="persistence"))
    cfg = parse_config({"bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}"},
                        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},
                        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
                        "storage": {"path": str(storage)}, "http": {"enabled": False},
                        "forecaster": {"cycle_seconds": 0.2, "source": "meter"}}, "test", environ={})
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        def shown():
            return {n: (gateway.device.get(n), gateway.device.status_flags(n)["fault"])
                    for n in (P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.RATE_OF_CHANGE, P.HIGH_LOAD)}
        held = {P.FIFTEEN_MIN_FORECAST: (255.0, True), P.ONE_HOUR_FORECAST: (250.0, True),
                P.RATE_OF_CHANGE: (1.5, True), P.HIGH_LOAD: (False, True)}
        assert shown() == held
        # the first cycles, on the same stale history, hold them so
        await eventually(lambda: gateway.forecast.last_forecast is not None, FIRST_CYCLE_SECONDS, "the first cycle")
        assert shown() == held
        assert not gateway.device.status_flags(P.HIGH_LOAD_THRESHOLD)["fault"]
    finally:
        await gateway.stop()

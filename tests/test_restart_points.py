"""A restart as a BAS sees it: from the device's first answer the forecast points say the forecast the run before left
(live: its power is minutes old at most) and meter-power its last reading, flagged until the first read; never 0 kW,
nor high-load-conditions off, while the forecaster and the meter start behind them. Runs the real gateway process."""
from __future__ import annotations

import asyncio
import math
import time

import pytest
from bacnet_peer import BacnetPeer, PeerError
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from forecaster.series import minute_of
from forecaster.store import ForecastStore

pytestmark = pytest.mark.timeout(3 * START_S)

KW = 260.0
FORECAST = [P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.HIGH_LOAD, P.HIGH_LOAD_THRESHOLD]
# whose value may be 0 or off by right (a flat last hour, no valley), but not in fault
NOT_IN_FAULT = [P.RATE_OF_CHANGE, P.LOW_LOAD, P.LOW_LOAD_THRESHOLD]
WATCHED = FORECAST + NOT_IN_FAULT + [P.METER_POWER]


def _history(storage) -> None:
    """Three days of a daily swing between 100 and 200 kW, the last hour at KW: a peak, high-load-conditions on."""
    last = minute_of(time.time()) - 1
    ks = list(range(last - 3 * 1440, last + 1))
    kws = [150 + 50 * math.sin(2 * math.pi * (k % 1440) / 1440) for k in ks]
    kws[-60:] = [KW] * 60
    ForecastStore(str(storage)).save_minutes(ks, kws, [1] * len(ks))


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

            # from before the device answers until the meter's first read: every answer, in order
            gateway.start()
            seen, deadline = [], time.monotonic() + START_S
            while not seen or seen[-1][P.METER_POWER][1]:
                assert time.monotonic() < deadline, (seen[-3:], gateway.log()[-3000:])
                if (now := await _read(peer, gw)) is not None:
                    seen.append(now)
                await asyncio.sleep(0.02)
        finally:
            gateway.stop()
    for i, now in enumerate(seen):
        # live, as the run before left them (a model fitted meanwhile may move the kW, never to 0)
        assert all(now[name][0] not in (0.0, "inactive") and not now[name][1] for name in FORECAST), (i, len(seen), now)
        assert not any(now[name][1] for name in NOT_IN_FAULT), (i, len(seen), now)
        # flagged (no read yet) while the meter starts, but the last reading, not 0 kW
        assert now[P.METER_POWER][0] == pytest.approx(KW), (i, now)
    assert "Traceback" not in gateway.log()

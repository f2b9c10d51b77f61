"""high-load-threshold and low-load-threshold (AV8, AV9): the kW each load flag compares the 60-minute
forecast with, read over the wire as a BAS reads them (a second BACnet stack on loopback against a real
Gateway), beside what the operator API says the forecaster uses."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import numpy as np
import pytest
from bacnet_peer import BacnetPeer, PeerError
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from test_bacnet_services import notification
from waiting import eventually

from bacnet_api import points as P
from forecaster import DemandForecaster
from forecaster.store import ForecastStore
from ven.app import Gateway
from ven.device_restore import BACNET_DATABASE
from ven.config_load import parse_config
from ven.storage import Storage

pytestmark = pytest.mark.timeout(60)

THRESHOLDS = (P.HIGH_LOAD_THRESHOLD, P.LOW_LOAD_THRESHOLD)
PROPS = ["presentValue", "statusFlags", "reliability"]


def _config(tmp_path, bacnet_port, http_port, vtn_port, **forecaster):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": 500011},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{http_port}"},
        "forecaster": {"cycle_seconds": 0.2, "source": "bacnet_input", **forecaster},
    }, "test", environ={})


def _stored_history(path: str, end: float, hours: float = 36.0) -> None:
    """`hours` of a load read every 15 min up to `end`, as an earlier run stored it: more than the day the
    percentile thresholds need, and uneven enough that its 90th and 10th percentiles are no round numbers.
    One reading per 15-minute demand, whichever minute the demands end at: read every 5 min, the thresholds
    moved with the minute a cycle computed them in, and a test that crossed such a minute saw a change."""
    t = end - np.arange(0, hours * 3600, 900.0)[::-1]
    fc = DemandForecaster()
    fc.seed(t, 200 + 90 * np.sin(2 * np.pi * t / 86400) + 17 * np.sin(2 * np.pi * t / 4100))
    ForecastStore(path).save_minutes(*fc.drain_dirty())


async def _read(peer, gw, names):
    rows = await peer.read_multiple(gw, [(P.BY_NAME[n].object_id, PROPS) for n in names])
    assert not isinstance(rows, PeerError), rows
    return {n: tuple(rows[(P.BY_NAME[n].object_id, prop)] for prop in PROPS) for n in names}


@pytest.fixture
async def with_history(tmp_path, free_udp_port, free_tcp_port):
    """A gateway whose storage holds 36 h of history that ended 10 minutes ago: the thresholds are known
    from the first forecast, and no power has come in since (the forecasts are in fault)."""
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), free_tcp_port(), input_stale_seconds=60)
    _stored_history(cfg.storage.path, time.time() - 600)
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            yield gateway, peer, cfg.bacnet.address.replace("/8", "")
    finally:
        await gateway.stop()


async def test_the_threshold_points_read_the_thresholds_the_forecaster_uses(with_history):
    gateway, peer, gw = with_history

    async def live():
        points = await _read(peer, gw, THRESHOLDS)
        return points if all(p[1] == [0, 0, 0, 0] for p in points.values()) else None
    points = await eventually(live, 10, "both thresholds live")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{gateway.http.url}/api/status") as r:
            status = await r.json()
        async with http.get(f"{gateway.http.url}/api/history?hours=1") as r:
            history = await r.json()
    used = status["forecaster"]["last_forecast"]
    high, low = used["high_threshold_kw"], used["low_threshold_kw"]
    assert 200 < high < 300 and 100 < low < 200, used            # the 90th and 10th percentiles of the history
    assert (history["high_threshold_kw"], history["low_threshold_kw"]) == (high, low)
    assert points[P.HIGH_LOAD_THRESHOLD] == (pytest.approx(high, rel=1e-6), [0, 0, 0, 0], "noFaultDetected")
    assert points[P.LOW_LOAD_THRESHOLD] == (pytest.approx(low, rel=1e-6), [0, 0, 0, 0], "noFaultDetected")
    assert status["points"][P.HIGH_LOAD_THRESHOLD]["value"] == pytest.approx(high, rel=1e-6)
    # no power for input_stale_seconds: the forecasts cannot tell, the thresholds still stand on the history
    stale = await _read(peer, gw, (P.ONE_HOUR_FORECAST, P.HIGH_LOAD))
    assert stale[P.ONE_HOUR_FORECAST][1] == stale[P.HIGH_LOAD][1] == [0, 1, 0, 0], stale
    assert await peer.read(gw, P.BY_NAME[P.HIGH_LOAD_THRESHOLD].object_id, "units") == "kilowatts"


async def test_a_cov_subscriber_hears_a_threshold_change_and_fault_not_every_cycle(with_history):
    gateway, peer, gw = with_history
    await eventually(lambda: not gateway.device.status_flags(P.HIGH_LOAD_THRESHOLD)["fault"], 10, "a threshold")
    high = gateway.forecast.last_forecast.high_threshold_kw
    oid = ObjectIdentifier(P.BY_NAME[P.HIGH_LOAD_THRESHOLD].object_id.replace(" ", ","))
    async with peer.app.change_of_value(Address(gw), oid, None, True, 60) as scm:
        first = await notification(scm)
        assert first == {"present-value": pytest.approx(high, rel=1e-6), "status-flags": [0, 0, 0, 0]}
        with pytest.raises(asyncio.TimeoutError):    # five more cycles with the same threshold: nothing to say
            await notification(scm, timeout=1.0)
        # 15 days on, the 14 days behind hold no history: no threshold. The last one stays readable, flagged.
        gateway.forecast._clock = lambda: time.time() + 15 * 86400
        assert await notification(scm, timeout=15.0) == {"present-value": first["present-value"],
                                                        "status-flags": [0, 1, 0, 0]}
        assert gateway.forecast.last_forecast.high_threshold_kw is None
        gateway.forecast._clock = time.time
        assert await notification(scm, timeout=15.0) == first


async def test_the_release_that_adds_them_counts_a_new_database_revision(tmp_path, free_udp_port, free_tcp_port,
                                                                        caplog):
    # A BAS that cached the device's objects before the upgrade must learn that there are two more. The last
    # run's objects are kept in storage.path; this one is given them as the release before wrote them.
    caplog.set_level(logging.INFO, logger="ven.device_restore")
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), free_tcp_port())
    gw, device = cfg.bacnet.address.replace("/8", ""), f"device {cfg.bacnet.device_id}"

    async def revision(peer) -> int:
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            return await peer.read(gw, device, "databaseRevision")
        finally:
            await gateway.stop()

    async with BacnetPeer(free_udp_port()) as peer:
        first = await revision(peer)
        storage = Storage(cfg.storage.path)
        try:
            stored = json.loads(storage.load_value(BACNET_DATABASE))
            before = [o for o in stored["objects"] if not o.endswith(THRESHOLDS)]
            assert len(before) == len(stored["objects"]) - 2, stored
            storage.save_value(BACNET_DATABASE, json.dumps({"revision": first, "objects": before}))
        finally:
            storage.close()
        assert await revision(peer) == first + 1
        assert await revision(peer) == first + 1      # the same objects again: it stands
    said = [r.getMessage() for r in caplog.records if "BACnet objects differ" in r.getMessage()]
    assert said == [f"BACnet objects differ from the last run (new analogValue 8 high-load-threshold, "
                    f"analogValue 9 low-load-threshold): databaseRevision {first + 1}"], said


async def test_watts_written_for_kw_are_refused_on_the_wire_with_the_reason(with_history, caplog):
    # A 38 kW shop's BAS writing 30,000 (watts): within the bounds, taken, the forecasts read 7,482 kW and high-load
    # came on at once, and nothing was said (helper loads39 W3). Now the BAS hears value-out-of-range, as for a value
    # past the bounds, and the log says why; the meter stands in meanwhile, as for any refused write
    gateway, peer, gw = with_history
    caplog.set_level(logging.WARNING, logger="bacnet_api.write_access")
    await eventually(lambda: gateway.forecast.forecaster.implausible(1e6), 10, "the history's peak known")
    top = gateway.forecast.forecaster.implausible(1e6).split("(")[1].split(" kW")[0]
    err = await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 50_000.0, priority=8)
    assert isinstance(err, PeerError) and err.code == "valueOutOfRange", err
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bacnet_api.write_access"]
    assert line.endswith(f" refused (value-out-of-range): 50000 kW is over 100 times the median 15-minute demand of "
                         f"the last 14 days ({top} kW): watts written as kW? (if it is the site's power, set "
                         f"bacnet.input_max_kw to a few "
                         f"times its peak); repeats from it are counted, one line "
                         f"per 10 min at most"), line
    assert gateway.forecast.forecaster.rejected == 0        # never reached the forecaster
    assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 5.0 * float(top),
                            priority=8) is None              # five times the median: a building that grew


async def test_a_shed_written_in_watts_is_refused_on_the_wire_with_the_reason(with_history, caplog):
    # The same BAS writing bas-shed-power in watts (25,000 for a 25 kW shed) was acknowledged: every sample then had
    # 25,000 kW added, the forecaster refused them all with a line blaming input-power-meter and bacnet.input_max_kw,
    # and its points went to fault for the rest of the shed, while the BAS held its command as taken
    gateway, peer, gw = with_history
    caplog.set_level(logging.WARNING, logger="bacnet_api.write_access")
    await eventually(lambda: gateway.forecast.forecaster.implausible(1e6), 10, "the history's peak known")
    top = gateway.forecast.forecaster.implausible(1e6).split("(")[1].split(" kW")[0]
    shed = P.BY_NAME[P.SHED_POWER].object_id
    err = await peer.write(gw, shed, "presentValue", 25_000.0, priority=8)
    assert isinstance(err, PeerError) and err.code == "valueOutOfRange", err
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bacnet_api.write_access"]
    assert "bas-shed-power (analogValue 10) presentValue at priority 8" in line, line
    assert f" refused (value-out-of-range): 25000 kW is over 100 times the median 15-minute demand of the last 14 " \
           f"days ({top} kW): watts written as kW?" in line, line
    assert await peer.read(gw, shed, "priorityArray") == [None] * 16
    assert gateway.forecast.status()["shed_kw"] == 0.0
    # a shed the size of the building's load is taken
    assert await peer.write(gw, shed, "presentValue", float(top), priority=8) is None
    assert gateway.forecast.status()["shed_kw"] == pytest.approx(float(top), rel=1e-6)   # as a BACnet Real

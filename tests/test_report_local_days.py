"""Daily TELEMETRY_USAGE intervals a VTN asks for from a local midnight of the building's zone, across a clock change:
the gateway runs as a real process under libfaketime (see test_wall_clock.py) a little after the day of a change,
with readings of that day queued; the VTN (DemoVtn, real openleadr) and this test run on the real clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from gateway_process import GatewayProcess, write_config
from test_wall_clock import LIBFAKETIME, fake_clock
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")]
ROME, DAY = ZoneInfo("Europe/Rome"), timedelta(days=1)


def rome(*when) -> datetime:
    return datetime(*when, tzinfo=ROME).astimezone(timezone.utc)


# (the VTN's dtstart, the day of the change, its length; the first reading of the next day, the gateway's clock)
CHANGES = {"spring": (rome(2027, 3, 1), (2027, 3, 28), 23, rome(2027, 3, 29, 0, 30), rome(2027, 3, 29, 1, 30)),
           "autumn": (rome(2026, 10, 1), (2026, 10, 25), 25, rome(2026, 10, 26, 0, 10), rome(2026, 10, 26, 1, 30))}


@pytest.mark.parametrize("change", CHANGES)
async def test_a_day_asked_from_a_rome_midnight_is_romes_day_on_the_day_of_a_clock_change(
        tmp_path, free_tcp_port, free_udp_port, monkeypatch, change):
    # Fixed 24-hour steps from the VTN's midnight put the spring day's 00:30 of the next day into it (01:00 to 01:00
    # CEST), and left the autumn day's last hour to the next day: a day's kWh off by an hour's energy.
    origin, day, hours, next_day, clock_at = CHANGES[change]
    midnight = rome(*day)
    fake_clock(monkeypatch, tmp_path / "faketime.txt", clock_at, "Europe/Rome")
    meter_port, vtn_port, storage = free_udp_port(), free_tcp_port(), tmp_path / "gw.sqlite"
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=storage,
                 ven_name=f"days-{change}", vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1)
    config.write_text(config.read_text().replace("[forecaster]\n", '[forecaster]\ntimezone = "Europe/Rome"\n'))
    queued = TelemetryQueue(storage)        # the day's readings, as the gateway queued them that day
    for at, kw in ((rome(*day, 0, 30), 10.0), (rome(*day, 12), 20.0), (rome(*day, 23, 30), 30.0), (next_day, 99.0)):
        queued.add(at, kw)
    queued.close()
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0), \
            DemoVtn(vtn_port, poll_seconds=1, request_telemetry=False) as vtn:
        with GatewayProcess(config, tmp_path / "gw.log") as gateway:
            try:
                offer = await eventually(lambda: vtn.report_metadata, 60, "the reports offered")
                rrid = vtn.create_report(offer[-1]["ven_id"], DAY, DAY, window=(origin, 60 * DAY))
                await eventually(lambda: [u for u in vtn.updates if u[0] == rrid], 30, "the day's interval")
            except AssertionError as failed:
                raise AssertionError(f"{failed}; log:\n{gateway.log()[-3000:]}") from None
            log = gateway.log()
    got = [(start, length, value) for r, ivs in vtn.updates if r == rrid for start, length, _, value in ivs]
    assert got == [(midnight, timedelta(hours=hours), 20.0)], (got, log[-3000:])
    assert "in days of Europe/Rome" in log, log[-3000:]

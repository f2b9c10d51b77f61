"""A report's dtstart is the end of the last interval the one before it carried (docs/openadr.md "What the VTN
receives"), after a restart too: one stream alone kept its place in storage.path only from its first update, so the
next run's first report was dated from there, over every interval the VTN had taken since, which then read as not
measured."""
from __future__ import annotations

import pytest

from bacnet_api.simulator import MeterSimulator
from test_gateway import fast_config
from ven.app import Gateway
from ven.vtn_server import DemoVtn
from waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def test_the_first_report_after_a_stop_is_dated_from_the_last_interval_the_vtn_took(
        tmp_path, free_udp_port, free_tcp_port):
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports, telemetry_seconds=1)
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=40.0)
    vtn = DemoVtn(port=ports["vtn_port"], poll_seconds=0.3)
    gateway = Gateway(config)
    await vtn.start()
    await meter.start()
    await gateway.start()
    try:
        await eventually(lambda: len(vtn.report_spans) >= 5, 30, "reports flowing")
        await gateway.stop()        # what SIGTERM runs
        before = len(vtn.report_spans)
        taken = max(end for _, _, end in vtn.report_spans)
        gateway = Gateway(config)
        await gateway.start()
        await eventually(lambda: len(vtn.report_spans) > before, 30, "a report after the restart")
    finally:
        await gateway.stop()
        await meter.stop()
        await vtn.stop()
    _, dtstart, _ = vtn.report_spans[before]
    assert dtstart >= taken, (dtstart, taken, vtn.report_spans[before - 2:before + 2])

"""An opt answer the VTN fails for a while, across the end of its event, against openleadr's own VTN.

The BAS opts out in an event's last minutes while the utility's VTN (or the proxy in front of it) is failing the
answers: "500 server busy" in its eiResponse, HTTP 503 from a proxy whose VTN is restarting. The event then ends.
Once the VTN is well, the utility must still hear the optOut: it settles the event on the site's answer, and a
site counted as shedding while it had opted out is a penalty. Only an answer to an event the VTN itself listed
completed (openleadr's VTN fails those for good) is given up on."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from aiohttp import web

from test_vtn import running
from test_vtn_openleadr_queue import BUSY, UtilityVtn, now
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting


class FailingVtn(UtilityVtn):
    """Fails the VEN's oadrCreatedEvent while `failing`, as `how` says: its eiResponse or a proxy's HTTP 503."""

    failing = False
    failed = 0

    def __init__(self, port: int, how: str):
        super().__init__(port)
        self.how = how
        self.server.app.middlewares.append(self._fail)

    @web.middleware
    async def _fail(self, request, handler):
        if self.failing and request.path.endswith("/EiEvent") and b"oadrCreatedEvent" in await request.read():
            self.failed += 1
            if self.how == "busy":
                return web.Response(body=BUSY % self.ven_id.encode(), content_type="application/xml")
            return web.Response(status=503, text="backend restarting")
        return await handler(request)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["busy", "http503"])
async def test_an_opt_out_the_vtn_failed_until_its_event_ended_still_reaches_it(tmp_path, free_tcp_port, caplog, how):
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with FailingVtn(free_tcp_port(), how) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        started = now() - timedelta(seconds=1)
        ends = started + timedelta(seconds=6)
        vtn.add_event("shed", 2.0, started, timedelta(seconds=6))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 5, "the event answered")
        vtn.failing = True
        gw.vtn.set_opt_out(True)    # the BAS writes ADR-Opt-Out in the event's last seconds
        await until(lambda: vtn.failed >= 1, 5, "the optOut failed by the VTN")
        await until(lambda: now() > ends + timedelta(seconds=1), 10, "the event over")
        failed = vtn.failed
        await until(lambda: vtn.failed > failed, 10, "the optOut failed again, its event over")
        vtn.failing = False
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the BAS's optOut at the utility's VTN")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")
    assert not [r for r in caplog.records if "not sent again" in r.getMessage()]

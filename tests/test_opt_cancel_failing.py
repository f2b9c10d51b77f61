"""A VTN that fails oadrCancelOpt for a while (HTTP 500, a VTN restarting behind its proxy): the new opt goes, the
cancel is sent again at each pass, and the operator is told once when the withdrawal starts failing and once when it
ends, against the demo VTN (openleadr's server, keeping opts by optID) on loopback."""
from __future__ import annotations

import contextlib
import logging

import pytest
from aiohttp import web

from test_opt_withdrawn import _opted_out
from test_vtn import running
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def _failing_cancels(vtn: DemoVtn) -> dict:
    """oadrCancelOpt answered HTTP 500 while state["fail"]; the count of those failed."""
    state = {"fail": True, "failed": 0}

    @web.middleware
    async def busy(request, handler):
        if state["fail"] and request.path.endswith("/EiOpt") and b"oadrCancelOpt" in await request.read():
            state["failed"] += 1
            return web.Response(status=500, text="busy")
        return await handler(request)
    vtn._server.app.middlewares.insert(0, busy)
    return state


@contextlib.asynccontextmanager
async def _changed_mind(tmp_path, free_tcp_port, caplog):
    """A gateway that opted out of the VTN's event and then back in, the VTN failing its cancels."""
    caplog.set_level(logging.DEBUG, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    state = _failing_cancels(vtn)
    async with vtn, running(tmp_path, vtn.url) as gw:
        await _opted_out(gw, vtn)
        gw.vtn.set_opt_out(False)
        yield gw, vtn, state


def _said(caplog) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.INFO and "withdr" in r.getMessage()]


@pytest.mark.timeout(60)
async def test_a_vtn_failing_cancels_for_a_while_is_said_once_when_it_starts_and_once_when_it_ends(
        tmp_path, free_tcp_port, caplog):
    async with _changed_mind(tmp_path, free_tcp_port, caplog) as (gw, vtn, state):
        await until(lambda: sorted(vtn.opts_held_for("silent")) == ["optIn", "optOut"], 10, "the optIn taken")
        await until(lambda: state["failed"] >= 3, 10, "the cancel failed three times")
        state["fail"] = False
        await until(lambda: vtn.opts_held_for("silent") == ["optIn"], 10, "the optOut withdrawn at last")
        await until(lambda: len(_said(caplog)) >= 2, 5, "the withdrawal said")
    said = _said(caplog)
    assert len(said) == 2, said
    assert said[0].startswith("WARNING the VTN failed to withdraw the optOut oadrCreateOpt for event silent") \
        and "HTTP 500" in said[0], said
    assert said[1].startswith("INFO withdrew the optOut oadrCreateOpt for event silent") \
        and "failed since" in said[1], said


@pytest.mark.timeout(60)
async def test_an_opt_the_vtn_never_withdrew_before_its_event_left_is_said(tmp_path, free_tcp_port, caplog):
    async with _changed_mind(tmp_path, free_tcp_port, caplog) as (gw, vtn, state):
        await until(lambda: state["failed"] >= 2, 10, "the cancel failed twice")
        # over for longer than the history keeps events (weeks): what the schedule's prune does then
        gw.schedule.forget("silent")
        failed = state["failed"]
        polls = gw.vtn.polls_total
        await until(lambda: gw.vtn.polls_total >= polls + 2, 10, "two polls more")
        assert state["failed"] == failed
    said = _said(caplog)
    assert len(said) == 2, said
    assert said[0].startswith("WARNING the VTN failed to withdraw the optOut"), said
    assert said[1].startswith("INFO the VTN never withdrew the optOut oadrCreateOpt for event silent"), said

"""The opts (oadrCreateOpt) a VTN holds for an event that wants no oadrCreatedEvent, as its operator sees them, against
the demo VTN (openleadr's server, its EiOpt served and keeping opts by optID) on loopback: one opt per event, the
site's answer of now, and an opt sent again is the message first sent."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from aiohttp import web

from test_vtn import running, now
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def _recording(vtn: DemoVtn, fail_first: set[str]) -> list[tuple[bytes, int]]:
    """Every EiOpt request's body and the status it got; the first oadrCreateOpt of each optType in `fail_first`
    failed with HTTP 500 (a VTN restarting behind its proxy)."""
    seen: list[tuple[bytes, int]] = []

    @web.middleware
    async def record(request, handler):
        if request.path.endswith("/EiOpt"):
            body = await request.read()
            failed = next((o for o in fail_first if b"oadrCreateOpt" in body and f">{o}<".encode() in body), None)
            if failed:
                fail_first.discard(failed)
                seen.append((body, 500))
                return web.Response(status=500, text="busy")
            seen.append((body, 200))
        return await handler(request)
    vtn._server.app.middlewares.insert(0, record)
    return seen


async def _opted_out(gw, vtn: DemoVtn) -> None:
    """An event running that wants no answer, and the BAS's optOut held by the VTN."""
    await until(lambda: gw.vtn.connected, 10, "registration")
    vtn.add_event([1.0], now() - timedelta(seconds=1), 600, event_id="silent", response_required="never")
    await until(lambda: gw.schedule.get("silent"), 10, "listed")
    gw.vtn.set_opt_out(True)
    await until(lambda: vtn.opts_held_for("silent") == ["optOut"], 10, "the VTN holds the optOut")


def _creates(seen: list[tuple[bytes, int]], opt: str) -> list[tuple[bytes, int]]:
    return [(b, st) for b, st in seen if b"oadrCreateOpt" in b and f">{opt}<".encode() in b]


@pytest.mark.timeout(60)
async def test_a_changed_mind_withdraws_the_opt_the_vtn_holds(tmp_path, free_tcp_port, caplog):
    """The BAS opts out of an event that wants no answer, then back in, then out again. Each answer went as a new
    oadrCreateOpt and none was withdrawn: the VTN held optOut, optIn and optOut side by side, and its operator read
    the site both ways. Each change now withdraws the opt held (oadrCancelOpt), so it holds the answer of now alone;
    each first send failed, and the one sent again is the same message, byte for byte."""
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    seen = _recording(vtn, {"optOut", "optIn"})
    async with vtn, running(tmp_path, vtn.url) as gw:
        await _opted_out(gw, vtn)
        gw.vtn.set_opt_out(False)
        await until(lambda: vtn.opts_held_for("silent") == ["optIn"], 10, "the VTN holds the optIn alone")
        gw.vtn.set_opt_out(True)
        await until(lambda: vtn.opts_held_for("silent") == ["optOut"], 10, "the VTN holds the new optOut alone")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")
    for opt in ("optOut", "optIn"):
        (failed, status), (again, taken) = _creates(seen, opt)[:2]
        assert (status, taken) == (500, 200) and again == failed, (opt, failed, again)
    cancels = [b for b, _ in seen if b"oadrCancelOpt" in b]
    assert len(cancels) == 2, seen
    assert len([r for r in caplog.records if r.getMessage().startswith("withdrew the ")]) == 2


@pytest.mark.timeout(60)
async def test_a_restart_tells_the_vtn_the_opt_it_holds(tmp_path, free_tcp_port):
    """A start tells the VTN again of an optOut to an event that wants no answer (whether it heard it is not
    kept): under a new optID, a VTN keeping opts held two opt-outs of the event, and after an optIn in between one
    optOut, an optIn and the same optOut again. The opt is kept in storage.path and the start sends the same one."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    seen = _recording(vtn, set())
    async with vtn:
        async with running(tmp_path, vtn.url) as gw:
            await _opted_out(gw, vtn)
        before = len(seen)
        async with running(tmp_path, vtn.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration after the restart")
            await until(lambda: len(seen) > before, 10, "the optOut told again")
            await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")
    (first, _), (told_again, status) = _creates(seen, "optOut")
    assert told_again == first and status == 200, (first, told_again)
    assert vtn.opts_held_for("silent") == ["optOut"]


@pytest.mark.timeout(60)
async def test_a_vtn_that_will_not_withdraw_an_opt_still_gets_the_new_one(tmp_path, free_tcp_port, caplog):
    """A VTN serving oadrCreateOpt but not oadrCancelOpt (HTTP 404): the optIn goes all the same, in one INFO line,
    and the cancel is not sent again at each poll."""
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    cancels: list[bytes] = []

    @web.middleware
    async def no_cancel(request, handler):
        if request.path.endswith("/EiOpt") and b"oadrCancelOpt" in (body := await request.read()):
            cancels.append(body)
            return web.Response(status=404, text="Not Found")
        return await handler(request)
    vtn._server.app.middlewares.insert(0, no_cancel)
    async with vtn, running(tmp_path, vtn.url) as gw:
        await _opted_out(gw, vtn)
        gw.vtn.set_opt_out(False)
        await until(lambda: sorted(vtn.opts_held_for("silent")) == ["optIn", "optOut"], 10, "the optIn taken")
        polls = gw.vtn.polls_total
        await until(lambda: gw.vtn.polls_total >= polls + 2, 10, "two polls more")
    assert len(cancels) == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("the VTN did not withdraw")]
    assert len(said) == 1 and "HTTP 404" in said[0] and said[0].endswith("the new answer goes all the same"), said


@pytest.mark.timeout(60)
async def test_a_modification_moves_the_opt_out_to_it(tmp_path, free_tcp_port):
    """The utility modifies an event the site opted out of: the optOut goes again naming the new modification
    (silence on it means taking part), and the one naming the old is withdrawn, so the VTN holds one optOut."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    seen = _recording(vtn, set())
    async with vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event([1.0, 2.0], now() + timedelta(minutes=5), 60, event_id="silent", response_required="never")
        await until(lambda: gw.schedule.get("silent"), 10, "listed")
        gw.vtn.set_opt_out(True)
        await until(lambda: vtn.opts_held_for("silent") == ["optOut"], 10, "the VTN holds the optOut")
        vtn.modify_event("silent", levels=[3.0, 1.0])
        await until(lambda: (1, "optOut") in {(m, o) for _, _, m, o, _ in vtn.created_opts}, 10, "the new optOut")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")
    assert vtn.opts_held_for("silent") == ["optOut"] and len([b for b, _ in seen if b"oadrCancelOpt" in b]) == 1

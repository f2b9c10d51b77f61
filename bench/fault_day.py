"""A compressed bad day against the real `edge-gateway run` process, read as the operator reads its log.

    python bench/fault_day.py [--vtn-down 30] [--vtn-settle 5] [--keep DIR]

Real peers on loopback: a demo VTN behind a hand-written one (tests/raw_vtn.py, for the DTD and the bounded
report request), the routed meter simulator, and a BACnet peer as the BAS writing input-power-meter every
second. Needs root, for the small tmpfs storage.path is on. In order: the VTN down then up; the meter silent
then back; the BAS stops writing input-power-meter then resumes; storage.path full (a read-only remount is
refused while the file is open for writing) then with room again; 100 idle HTTP connections over the 64 cap
then closed; a VTN answer with a DTD; a report request with a bounded reportInterval; an event listed,
modified, cancelled; ADR-Opt-Out set and relinquished; DeviceCommunicationControl disableInitiation then enable.

Prints the step times, /healthz after each step, the gateway's whole log, and a table of faults with the lines
that start and end each. Nothing is asserted; lines repeated and tracebacks are counted at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import re
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiohttp  # noqa: E402
from bacnet_peer import BacnetPeer  # noqa: E402
from gateway_process import GatewayProcess, write_config  # noqa: E402
from raw_vtn import RawVtn, create_report, distribute, event, interval, report_request, signal  # noqa: E402
from bacpypes3.apdu import DeviceCommunicationControlRequest  # noqa: E402
from bacpypes3.pdu import Address  # noqa: E402
from bacpypes3.primitivedata import CharacterString  # noqa: E402

from bacnet_api import points as P  # noqa: E402
from bacnet_api.simulator import MeterSimulator  # noqa: E402
from bench._common import free_port, free_tcp_port, wait_until  # noqa: E402
from ven.vtn_server import DemoVtn  # noqa: E402

PASSWORD = "Dr-3vent!"
DTD = b'<!DOCTYPE oadrPayload [<!ENTITY a "a">]>\n'

# fault: the start line's pattern, the end line's. Expected: one of each per fault the day causes
# (the VTN's: its outage and the DTD, each starting with a failed poll; the meter's: silent and DCC; storage: one
# per part)
FAULTS = {
    "VTN": (r"VTN (poll|registration) failed", r"VTN connected (steadily )?(again )?after"),
    "meter": (r"meter fault", r"meter answering (steadily )?again"),
    # its end is said once the BAS has written for 2 x input_stale_seconds (10 s), during the storage step
    "BAS input": (r"forecaster now learns from meter \(BAS input", r"forecaster (now )?learns from bacnet_input.* (after|again)"),
    "storage.path": (r"ERROR storage\.path", r"storage\.path .*(written .*again|opened)"),
    "HTTP cap": (r"refusing new ones", r"accepting connections again"),
    "BACnet DCC": (r"communication initiation disabled by", r"initiation enabled again"),
    "report request": (r"VTN report request .* replaces|VTN requested telemetry \(request bounded-rr\)",
                       r"TELEMETRY_USAGE request .* ended"),
    "event": (r"event day-evt received", r"event day-evt cancelled"),
    "ADR-Opt-Out": (r"ADR-Opt-Out active", r"ADR-Opt-Out relinquished"),
}


async def dcc(bas: BacnetPeer, gw: str, mode: str, password: str | None = None):
    apdu = DeviceCommunicationControlRequest(enableDisable=mode, destination=Address(gw))
    if password is not None:
        apdu.password = CharacterString(password)
    return await asyncio.wait_for(bas.app.request(apdu), 5)


async def get(http: aiohttp.ClientSession, url: str):
    try:
        async with http.get(url) as r:
            return r.status, (await r.json()) if r.content_type == "application/json" else await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        return None, repr(err)


async def main(args) -> None:
    work = Path(args.keep or tempfile.mkdtemp(prefix="fault-day-"))
    work.mkdir(parents=True, exist_ok=True)
    ro = work / "store"
    ro.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ro)], check=True)
    # unmounted however the run ends, a peer that fails to start included
    atexit.register(subprocess.run, ["umount", "-l", str(ro)], capture_output=True)
    bacnet_port, meter_port, http_port = free_port(), free_port(), free_tcp_port()
    demo_port, raw_port = free_tcp_port(), free_tcp_port()
    config, log_path = work / "gw.toml", work / "gateway.log"
    write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, vtn_port=raw_port, http_port=http_port,
                 storage=ro / "gw.sqlite", ven_name="fault-day", retry_min_seconds=0.5, retry_max_seconds=2,
                 telemetry_seconds=1, storage_retry_seconds=2, cycle_seconds=1, vtn_settle_seconds=args.vtn_settle)
    text = config.read_text().replace("[bacnet]\n", f'[bacnet]\ndcc_password = "{PASSWORD}"\n')
    config.write_text(text + "input_stale_seconds = 5\n")
    gw = f"127.0.0.1:{bacnet_port}"
    steps: list[tuple[str, str, str]] = []   # (utc time, step, healthz)

    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as meter, \
            DemoVtn(demo_port, poll_seconds=1) as demo, BacnetPeer(free_port(), timeout=2.0) as bas, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        raw = RawVtn(raw_port, demo.url, demo.vtn_id)
        await raw.__aenter__()
        writing = asyncio.Event()
        writing.set()

        async def bas_writes():
            value = 80.0
            while True:
                await writing.wait()
                value += 0.1
                await bas.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", value, priority=8)
                await asyncio.sleep(1)

        async def mark(step: str):
            status, body = await get(http, f"http://127.0.0.1:{http_port}/healthz")
            steps.append((datetime.now(timezone.utc).strftime("%H:%M:%S"), step, f"{status} {body}"))
            print(steps[-1], flush=True)

        gateway = GatewayProcess(config, log_path)
        gateway.start()
        writer = None
        try:
            await wait_until(lambda: demo.vens, 30)
            writer = asyncio.create_task(bas_writes())
            await wait_until(lambda: len(demo.reports) >= 3, 20)
            await asyncio.sleep(3)
            await mark("healthy")
            ven_id = next(iter(demo.vens))

            await raw.__aexit__()
            await asyncio.sleep(args.vtn_down / 2)
            await mark("VTN down")
            await asyncio.sleep(args.vtn_down / 2)
            raw = RawVtn(raw_port, demo.url, demo.vtn_id)
            await raw.__aenter__()
            await asyncio.sleep(6)
            await mark("VTN up")

            meter.set_silent(True)
            await asyncio.sleep(6)
            await mark("meter silent")
            meter.set_silent(False)
            await asyncio.sleep(4)
            await mark("meter back")

            writing.clear()
            await asyncio.sleep(9)
            await mark("BAS stopped writing")
            writing.set()
            await asyncio.sleep(4)
            await mark("BAS writes again")

            # a tmpfs with the state file open for writing will not remount read-only: fill it instead
            subprocess.run(["dd", "if=/dev/zero", f"of={ro / 'filler'}", "bs=1M", "count=64"], capture_output=True)
            await asyncio.sleep(8)
            await mark("storage full")
            (ro / "filler").unlink()
            await asyncio.sleep(8)
            await mark("storage has room again")

            held = []
            for _ in range(100):
                s = socket.socket()
                s.connect(("127.0.0.1", http_port))
                held.append(s)
            await asyncio.sleep(3)
            await mark("100 idle connections held")
            for s in held:
                s.close()
            await asyncio.sleep(3)
            await mark("connections closed")

            start = datetime.now(timezone.utc) + timedelta(minutes=30)
            valid = distribute(raw.vtn_id, [event("dtd-evt", start, "PT1H", [signal([interval(1, "PT1H", 0)])])])
            raw.outbox.append(valid.replace(b"\n", b"\n" + DTD, 1))
            await wait_until(lambda: raw.served >= 1, 10)
            await asyncio.sleep(2)
            await mark("DTD answer")

            window = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
            offered = [r for r in demo.report_metadata if r["ven_id"] == ven_id][-1]
            raw.send(create_report(ven_id, [report_request("bounded-rr", offered["report_specifier_id"],
                                                           [offered["r_id"]], "PT1S", "PT1S", window, "PT4S")]))
            await asyncio.sleep(9)
            await mark("bounded report request over")

            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
            demo.add_event([1, 2], start=start, interval_seconds=30, event_id="day-evt")
            await asyncio.sleep(5)
            await mark("event listed")
            demo.modify_event("day-evt", levels=[3, 3])
            await asyncio.sleep(4)
            await mark("event modified")
            await bas.write(gw, P.BY_NAME[P.OPT_OUT].object_id, "presentValue", "active", priority=8)
            await asyncio.sleep(3)
            await mark("ADR-Opt-Out set")
            await bas.relinquish(gw, P.BY_NAME[P.OPT_OUT].object_id, 8)
            await asyncio.sleep(3)
            await mark("ADR-Opt-Out relinquished")
            demo.cancel_event("day-evt")
            await asyncio.sleep(4)
            await mark("event cancelled")

            await dcc(bas, gw, "disableInitiation", PASSWORD)
            await asyncio.sleep(4)
            await mark("DCC disabled")
            await dcc(bas, gw, "enable", PASSWORD)
            await asyncio.sleep(4)
            await mark("DCC enabled")
            status, body = await get(http, f"http://127.0.0.1:{http_port}/api/status")
            print("final status vtn:", body.get("vtn") if isinstance(body, dict) else body)
        finally:
            if writer:
                writer.cancel()
            gateway.stop()
            await raw.__aexit__()
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)

    log = log_path.read_text(errors="replace")
    print("\n==== log ====")
    print(log)
    lines = log.splitlines()
    print("==== faults: start and end lines ====")
    for name, (start, end) in FAULTS.items():
        starts = [ln for ln in lines if re.search(start, ln)]
        ends = [ln for ln in lines if re.search(end, ln)]
        print(f"{name:17} starts={len(starts)} ends={len(ends)}")
        for ln in starts + ends:
            print(f"    {ln[:160]}")
    masked = collections.Counter(re.sub(r"^\S+ ", "", re.sub(r"\d", "#", ln)) for ln in lines)
    print("==== repeated (digits masked) ====")
    for text, n in masked.most_common():
        if n > 1:
            print(n, text[:200])
    print("tracebacks:", sum("Traceback" in ln for ln in lines), "log:", log_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vtn-down", type=float, default=30.0)
    parser.add_argument("--keep", help="directory for the config, the log and the state file")
    # compressed like the retries (2 s, not 60): at the site's 60 s the DTD's failed poll, 50 s after the VTN is
    # back, is the same (intermittent) fault as the VTN being down, and its end comes after the day is over
    parser.add_argument("--vtn-settle", type=float, default=5.0, help="openadr.settle_seconds (the default is 60)")
    asyncio.run(main(parser.parse_args()))

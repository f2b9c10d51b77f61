"""Requests and time per meter read: the gateway's MeterClient against the routed meter simulator on loopback.

    python bench/meter_read.py [--reads 50] [--delay 0.02]

A meter with ReadPropertyMultiple (one request a read) and one without it (three ReadProperty requests: units,
presentValue, statusFlags), each answering at once and with `--delay` seconds per answer, as a slow MS/TP trunk
behind its router does. Requests are counted at the meter. Nothing is asserted but that each read gives the value.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _common import free_port, pct, quiet_logging, table

from bacnet_api.client import close_stack, start_stack
from bacnet_api.meter import MeterClient
from bacnet_api.simulator import MeterSimulator

WARM_UP = 3     # the connection's first reads (the route, and the service asked after an unanswered one)


async def measure(read_multiple: bool, delay: float, reads: int) -> list:
    async with MeterSimulator(f"127.0.0.1/8:{free_port()}", value=42500.0, units="watts",
                              read_multiple=read_multiple) as sim:
        sim.set_answer_delay(delay)
        app = await start_stack(f"127.0.0.1/8:{free_port()}", 500498, "bench-meter-read")
        try:
            meter = MeterClient(app, address=sim.meter_address, object="analogInput 2", router=sim.router_address,
                                timeout_seconds=2.0)
            for _ in range(WARM_UP):
                await meter.read_once()
            before, took = sim.requests.copy(), []
            for _ in range(reads):
                t = time.perf_counter()
                reading = await meter.read_once()
                took.append(1000 * (time.perf_counter() - t))
                if reading.value != 42.5:
                    raise SystemExit(f"read {reading.value!r} ({reading.error}), expected 42.5 kW")
            asked = sim.requests - before
        finally:
            await close_stack(app)
    kinds = ", ".join(f"{n / reads:g} {k}" for k, n in sorted(asked.items()))
    return ["yes" if read_multiple else "no", f"{1000 * delay:g}", kinds, statistics.median(took), pct(took, 90),
            max(took)]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reads", type=int, default=50)
    p.add_argument("--delay", type=float, default=0.02, help="seconds per answer for the slow rows")
    a = p.parse_args()
    quiet_logging()
    rows = [await measure(multiple, delay, a.reads) for delay in (0.0, a.delay) for multiple in (True, False)]
    print(table(["ReadPropertyMultiple", "ms per answer", "requests a read", "read ms p50", "p90", "max"], rows))


if __name__ == "__main__":
    asyncio.run(main())

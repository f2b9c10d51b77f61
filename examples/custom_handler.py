"""Run the gateway with a custom demand-response handler added through the package's API.

    python examples/custom_handler.py examples/gateway.toml

The handler here appends every change of the event state to a CSV (a site might instead switch a relay,
page someone, or post to a building's own system). It runs in the gateway's event loop: keep it quick
and hand slow work to a thread.
"""
from __future__ import annotations

import asyncio
import csv
import sys
from datetime import datetime, timezone

from ven.app import Gateway
from ven.cli import serve_until_signalled
from ven.config_load import load_config
from ven.logs import setup_logging


def log_to_csv(path: str):
    def handler(state) -> None:
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    state.level, state.active, state.start_minutes, state.opted_out])
    return handler


async def main(config_path: str) -> None:
    gateway = Gateway(load_config(config_path))
    gateway.add_schedule_listener(log_to_csv("dr-events.csv"))
    await gateway.start()
    try:
        await asyncio.Event().wait()
    finally:
        await gateway.stop()


if __name__ == "__main__":
    setup_logging("INFO")
    asyncio.run(serve_until_signalled(main(sys.argv[1] if len(sys.argv) > 1 else "examples/gateway.toml")))

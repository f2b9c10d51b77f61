"""Run the gateway with a custom demand-response handler added through the package's API.

    python examples/custom_handler.py examples/gateway.toml

The handler here appends every change of the event state to a CSV (a site might instead switch a relay,
page someone, or post to a building's own system). It runs in the gateway's event loop: keep it quick
and hand slow work to a thread. Everything else is `edge-gateway run`'s: the config's checks and log_level,
one gateway per storage.path, a taken port refused in one line (exit 75; a bad key 78), a clean stop on SIGTERM or
Ctrl-C.
"""
from __future__ import annotations

import csv
import sys
from datetime import datetime, timezone

from ven.cli import run_gateway


def log_to_csv(path: str):
    def handler(state) -> None:
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    state.level, state.active, state.start_minutes, state.opted_out])
    return handler


def add_handler(gateway) -> None:
    gateway.add_schedule_listener(log_to_csv("dr-events.csv"))


if __name__ == "__main__":
    sys.exit(run_gateway(sys.argv[1] if len(sys.argv) > 1 else "examples/gateway.toml", customize=add_handler))

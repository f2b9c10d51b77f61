"""`edge-gateway forget-forecast`: start the forecaster afresh, keeping the rest of storage.path.

For a meter.address corrected to another load (the start-up log's "meter changed since the last run"), or a
history learned from a meter that read watts as kW: the forecaster would go on from that history, its
percentile thresholds and model for days. Only with the gateway stopped, as it holds all three in memory
and writes them back.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import sqlite3

from bacnet_api.client import ensure_port_free

from .config import GatewayConfig
from .run_lock import held_by_another
from .storage_fs_reason import with_fs_reason

KEPT = "events, ADR-Opt-Out commands and queued telemetry stay"


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _held(c: dict) -> str:
    span = f" ({_utc(c['first'])} to {_utc(c['last'])})" if c["minutes"] else ""
    parts = [f"{c['minutes']:,} minute{'' if c['minutes'] == 1 else 's'} of history{span}"]
    if c["model"]:
        parts.append("its fitted model")
    parts.append(f"{c['forecasts']:,} issued forecast{'' if c['forecasts'] == 1 else 's'}")
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def seems_running(cfg: GatewayConfig) -> str | None:
    """Why the gateway seems to run on this machine, or None: it holds storage.path's lock, and bacnet.address's UDP
    port (a config naming other ports, the service's address set in its environment only, still finds the lock)."""
    held = held_by_another(cfg.storage.path)
    if held:
        return held
    try:
        ensure_port_free(cfg.bacnet.address)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return f"bacnet.address {cfg.bacnet.address} is in use"
    return None


def forget_forecast(cfg: GatewayConfig, yes: bool) -> int:
    from forecaster.store import ForecastStore

    path = cfg.storage.path
    if os.path.isdir(path):     # not "no such file": the gateway cannot use it either, the path is wrong
        print(f"storage.path {path} is a directory, not the gateway's file: nothing deleted")
        return 1
    if not os.path.isfile(path):    # the store would create one, for nothing
        print(f"storage.path {path}: no such file, nothing to forget")
        return 0
    busy = seems_running(cfg)
    if busy:
        print(f"{busy}: the gateway seems to run. Stop it first: it holds the forecaster's history and model in "
              f"memory and would write them back")
        return 1
    try:
        store = ForecastStore(path)
        held = store.contents()
        if not (held["minutes"] or held["model"] or held["forecasts"]):
            # "run again with --yes" and exit 1 sent the operator round again for nothing
            print(f"storage.path {path} holds no forecaster history, model or forecasts: nothing to forget")
            return 0
        if not yes:
            print(f"storage.path {path} holds the forecaster's {_held(held)}. Nothing deleted: run again with "
                  f"--yes to delete them ({KEPT})")
            return 1
        store.forget()
    except sqlite3.Error as err:
        # SQLite's "unable to open database file" alone left a read-only or full file system for the operator to find
        print(f"storage.path {path}: {with_fs_reason(str(err), path)}")
        return 1
    print(f"storage.path {path}: deleted the forecaster's {_held(held)}; {KEPT}. At the next start it learns "
          f"afresh, persistence serving until its first model")
    return 0

"""Which VEN a storage.path file holds the state of: a box moved to another site, or a card imaged from one that ran,
does not act on the old site's state.

The file keeps one VEN's telemetry backlog, events, ADR-Opt-Out command and report places, and one building's
forecaster history. None of them says whose. A box taken from building A to building B with its file, the config
edited (another ven_name, another utility's VTN), sent A's unsent readings to B's VTN as B's (an interval averaging
both meters), ran A's stored event in B while B's VTN was not yet reachable, restored A's BAS's ADR-Opt-Out (B's
utility heard optOut to its first event), and forecast B from A's history with A's load thresholds for weeks. Every
clone of an imaged card sent the master's backlog again, under its own name.

The file records the VEN it is for: `openadr.ven_name` and the VTN's host (not its scheme or port: a VTN put behind
TLS is the same VTN). A start under another one moves the file aside, as a damaged one is, and begins a new one; the
old file keeps everything, for whoever needs it. A file from before this record is taken as this VEN's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path

from .config import ConfigError
from .storage_sidecars import move_with_sidecars

log = logging.getLogger(__name__)

SITE_KEY = "site"
# what each table holds, for the line that says what went aside with the file
_HELD = (("telemetry_queue", "telemetry reading(s) not yet sent"), ("adr_events", "event(s)"),
         ("forecast_minute", "minute(s) of forecaster history"))


def site_of(ven_name: str, vtn_url: str) -> str:
    """The record a file keeps of the VEN it is for (JSON, as it is stored)."""
    host = (urllib.parse.urlsplit(vtn_url).hostname or "").lower()
    return json.dumps({"ven_name": ven_name, "vtn_host": host}, sort_keys=True)


def stored_site(path: str | Path) -> dict | None:
    """The VEN the file at `path` says it is for; None without a file or a record, or for a file that does not read
    (the stores say why)."""
    p = Path(path)
    try:
        if not p.is_file():
            return None
        row = _read(p, "SELECT value FROM kv WHERE key = ?", (SITE_KEY,))
    except (OSError, sqlite3.Error):   # a directory this user may not search, no kv table yet, locked, not SQLite
        return None
    try:
        site = json.loads(row[0]) if row else None
    except ValueError:
        return None
    return site if isinstance(site, dict) else None


def _changed(path: Path, site: str) -> tuple[dict, str] | None:
    """The VEN the file records and how it differs from `site` ("ven_name 'a' -> 'b'"), if it does."""
    was, now = stored_site(path), json.loads(site)
    if was is None or was == now:
        return None
    return was, ", ".join(f"{key} {was.get(key)!r} -> {now[key]!r}" for key in sorted(now) if was.get(key) != now[key])


def other_site_warnings(path: str | Path, site: str) -> list[str]:
    """check-config's word on a file that records another VEN: what `run` will do with it."""
    changed = _changed(Path(path), site)
    if changed is None:
        return []
    held = _held(Path(path))
    return [f"storage.path {path} holds the state of another VEN ({changed[1]}{f'; it holds {held}' if held else ''}): "
            f"`run` moves it aside and begins a new file (docs/operations.md: a box moved to another site)"]


def set_aside_if_other_site(path: str | Path, site: str) -> dict | None:
    """At start, before any store opens it: a file that records another VEN than `site` is moved aside
    (`<name>.<its ven_name>-<time>`, with its -wal and -shm), so the stores make a new one; returns what was done,
    for /api/status ({"to", "changed", "held", "at"}). Raises ConfigError when it cannot be moved (a read-only
    directory)."""
    p = Path(path)
    found = _changed(p, site)
    if found is None:
        return None
    was, changed = found
    held = _held(p)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(was.get("ven_name", "")))[:40] or "other-site"
    real = p.resolve()      # a symlink's file, not the link: the run lock and the -wal are the file's
    stamp = time.strftime('%Y%m%dT%H%M%S')
    aside = real.with_name(f"{real.name}.{name}-{stamp}")
    n = 1
    while aside.exists():       # two moves within a second (a config put back and forth) keep both
        n += 1
        aside = real.with_name(f"{real.name}.{name}-{stamp}-{n}")
    try:
        move_with_sidecars(real, aside)
    except OSError as err:
        # Not started: used as it is, the file's backlog went to this VTN, and its ADR-Opt-Out was restored, once it
        # took writes again. Only a box that moved meets this, with someone at it.
        raise ConfigError(f"storage.path {p} holds the state of another VEN ({changed}) and cannot be moved aside: "
                          f"{err.strerror or err}. Move it away (or make its directory writable) and start again; "
                          f"if the box did not move, delete its record of the VEN "
                          f"(docs/operations.md: the storage file)") from None
    log.warning("storage.path %s held the state of another VEN (%s%s): moved to %s and a new file begun, so nothing "
                "of another site's is sent to the VTN, run or forecast from. If the box did not move (the VEN renamed, "
                "the VTN moved to another host) and that state is this site's, docs/operations.md \"The storage file\" "
                "says how to put it back", p, changed, f"; it holds {held}" if held else "", aside.name)
    return {"to": str(aside), "changed": changed, "held": held,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _read(p: Path, sql: str, params=()):
    """One row of the file, without writing to it. A file in WAL mode on a read-only file system opens read-only
    only without its -shm (immutable), and then without what its -wal holds: a clean stop left none."""
    last: sqlite3.Error | None = None
    for mode in ("mode=ro", "immutable=1"):
        try:
            with contextlib.closing(sqlite3.connect(f"{p.resolve().as_uri()}?{mode}", uri=True)) as conn:
                return conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as err:
            last = err
    raise last


def _held(p: Path) -> str:
    """What the file holds that is a site's, in words ("" if it cannot be read)."""
    said = []
    for table, words in _HELD:
        with contextlib.suppress(OSError, sqlite3.Error):   # a table an older file has not made yet
            n = _read(p, f"SELECT count(*) FROM {table}")[0]  # noqa: S608 - our names
            if n:
                said.append(f"{n} {words}")
    return ", ".join(said)

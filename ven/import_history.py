"""`edge-gateway import-history`: a building's metered history (a BAS trend log, a utility's interval data) put into
the forecaster's store, so that a new install has its load thresholds at once and fits its first model at its first
start instead of learning for days. Only with the gateway stopped, as forget-forecast: the gateway holds the history
in memory and would not see the rows until its next start.

Additive: minutes storage.path already holds keep their readings, so a second import of the same file adds nothing.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import sys
import time
from zoneinfo import ZoneInfo

import numpy as np

from .config import GatewayConfig
from .forget_forecast import seems_running
from .run_lock import RunLock
from .storage_fs_reason import with_fs_reason

# The file's values over the minutes the store holds already, against the stored ones: a ratio past this either way is
# another unit (W read as kW) or another meter, and would be learned as the building's demand.
UNIT_RATIO = 2.0
OVERLAP_MINUTES = 10      # minutes in both, at least, before the ratio is judged
FAR_WIDTHS = 10.0


def _say(text: str) -> None:
    print(f"import-history: {text}", file=sys.stderr)


def _local(t: float, tz: ZoneInfo) -> str:
    local = dt.datetime.fromtimestamp(t, tz)
    # in the hour an autumn clock change repeats the wall time alone is either pass: named by its zone (EDT, EST)
    repeated = local.utcoffset() != local.replace(fold=1 - local.fold).utcoffset()
    return f"{local:%Y-%m-%d %H:%M}" + (f" {local:%Z}" if repeated else "")


def _owner_problem(path: str) -> str | None:
    """Run as root beside a gateway that runs as another user: the file, or its lock, made by root here would be one
    the gateway cannot write."""
    if os.geteuid() != 0:
        return None
    where = os.path.abspath(path)
    while not os.path.exists(where) and os.path.dirname(where) != where:   # what root would make lies under it
        where = os.path.dirname(where)
    try:
        owner = os.stat(where).st_uid
    except OSError:
        return None
    if owner == 0:
        return None
    return (f"storage.path {path}: {where} belongs to uid {owner}, and this runs as root: run it as the gateway's "
            f"user (sudo -u <user> edge-gateway import-history ...), or the gateway could not write the files made "
            f"here")


def _far_out(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """The values of `among` a BAS's "no data" mark (-99999) or a glitch gave: further from the others' 1st to 99th
    percentile than ten times its width. One such row inside the default input range failed the first model's check
    (an error of 188 kW, persistence's 29), and stretched the dashboard's chart to -120,000 kW."""
    out = np.zeros(values.shape, dtype=bool)
    if among.sum() < 100:
        return out
    lo, hi = np.percentile(values[among], [1, 99])
    width = max(hi - lo, 0.01 * max(abs(lo), abs(hi)), 1.0)
    return among & ((values < lo - FAR_WIDTHS * width) | (values > hi + FAR_WIDTHS * width))


def _unit_problem(store, ks: np.ndarray, sums, counts) -> str | None:
    held = store.held_means(int(ks.min()), int(ks.max()))
    both = [i for i, k in enumerate(ks.tolist()) if k in held]
    if len(both) < OVERLAP_MINUTES:
        return None
    ours = float(np.median([abs(sums[i] / counts[i]) for i in both]))
    stored = float(np.median([abs(held[int(ks[i])]) for i in both]))
    if ours == 0 or stored == 0 or 1 / UNIT_RATIO <= ours / stored <= UNIT_RATIO:
        return None
    ratio = ours / stored if ours > stored else stored / ours
    times = f"{ratio:.1f}" if ratio < 10 else f"{ratio:,.0f}"
    how = f"{times} times" if ours > stored else f"1/{times} of"
    return (f"over the {len(both):,} minutes the file shares with storage.path its values (median {ours:g} kW) are "
            f"{how} those it holds (median {stored:g} kW): another unit (--value-unit), another meter or another "
            f"time zone (--timezone). Nothing imported. If what it holds is an earlier import that was wrong, "
            f"`edge-gateway forget-forecast --yes` deletes the forecaster's history first")


class _Refused(Exception):
    """Nothing imported; the message says why (one line on stderr, exit 1)."""


def import_history(cfg: GatewayConfig, args) -> int:
    from .forecast_service import forecaster_from_config

    try:
        _check_place(cfg)
        tz = ZoneInfo(args.timezone or cfg.forecaster.timezone)
        times, values, lines, sheds, moved = _read(args, tz)
        fc = forecaster_from_config(cfg.forecaster, cfg.bacnet.input_min_kw, cfg.bacnet.input_max_kw)
        now = time.time()
        oldest = now - fc.keep_days * 86400
        inside, kept = _keep(fc, cfg, times, values, lines, tz, now, oldest)
        if not kept:
            raise _Refused(f"{args.csv}: no row inside the last {fc.keep_days:g} days holds a usable value: nothing "
                           f"imported")
        ks, sums, counts = (np.asarray(x) for x in fc.drain_dirty())
        sheds = [(a, b) for a, b in sheds if b > oldest]
        added, new_sheds, had_model, held_span = _write(cfg.storage.path, ks, sums, counts, sheds)
    except _Refused as refusal:
        _say(str(refusal))
        return 1
    kw, held = values[inside], len(ks) - added
    # as the file names its rows (and forget-forecast the minutes), not moved to their intervals' ends
    first, last = float(times[inside].min()) - moved, float(times[inside].max()) - moved
    # the range, so that a unit taken wrong (4 times, 1,000 times) shows at a glance
    print(f"storage.path {os.path.abspath(cfg.storage.path)}: imported {added:,} minute(s) of history, "
          f"{_local(first, tz)} to {_local(last, tz)} {tz.key}, from {kept:,} row(s) of {args.csv} "
          f"({kw.min():,.1f} to {kw.max():,.1f} kW, median {np.median(kw):,.1f} kW)"
          + (f"; {held:,} minute(s) it held already kept as read (to replace an earlier import: forget-forecast "
             f"--yes first)" if held else "")
          + (f"; {len(sheds)} event(s) kept out of learning ({new_sheds} new)" if args.events else "")
          + ("; the stored model, fitted before these, deleted" if (added or new_sheds) and had_model else "")
          + (_next_start(fc, held_span) if added or new_sheds else ". Nothing new"))
    return 0


def _running(busy: str) -> _Refused:
    return _Refused(f"{busy}: the gateway seems to run. Stop it first: it would not see the imported history until "
                    f"its next start")


def _check_place(cfg: GatewayConfig) -> None:
    path = cfg.storage.path
    if os.path.isdir(path):
        raise _Refused(f"storage.path {path} is a directory, not the gateway's file: nothing imported")
    if busy := seems_running(cfg):
        raise _running(busy)
    if problem := _owner_problem(path):
        raise _Refused(problem)


def _read(args, tz: ZoneInfo):
    """(times, values in kW, line numbers, event spans, the seconds --stamped start moved the times by) of the file,
    its notes said on the way."""
    from forecaster.export_csv import ReplayInputError, read_export, read_spans

    tally: dict = {}
    try:
        times, values, lines, skipped, notes, reading = read_export(
            args.csv, args.time_column, args.value_column, tz, args.time_format, args.encoding, args.decimal,
            args.value_unit, args.stamped, tally)
        sheds = read_spans(args.events, tz, args.time_format, args.encoding) if args.events else []
    except (ReplayInputError, OSError) as err:
        raise _Refused(str(err)) from None
    for note in ([reading] if reading else []) + notes:
        _say(note)
    unread = skipped - tally["empty"]
    if unread > len(times):
        # a --time-format that fits some rows only (day and month swapped) imported a day of a 44-day file, exit 0
        raise _Refused(f"{unread:,} row(s) could not be read, more than the {len(times):,} that could (the lines above "
                       f"name the first): check --time-format, --decimal and the columns. Nothing imported")
    return times, values, lines, sheds, tally.get("moved", 0.0)


def _keep(fc, cfg: GatewayConfig, times, values, lines, tz: ZoneInfo, now: float, oldest: float):
    """The rows the forecaster takes, seeded into `fc` (mask, count); those left out are said."""
    latest = now + 60       # the minute under way, as the gateway files it: its end
    old, ahead = int((times < oldest).sum()), int((times > latest).sum())
    inside = (times >= oldest) & (times <= latest)
    far = _far_out(values, inside)
    inside &= ~far
    kept = fc.seed(times[inside], values[inside])
    over = int((inside & (values > fc.max_kw)).sum())
    # the rows seed refused are not in what the last line reports: it gave a range up past the bound that refused them
    inside &= np.isfinite(values) & (values >= fc.min_kw) & (values <= fc.max_kw)
    if old:
        _say(f"{old:,} row(s) before {_local(oldest, tz)} not imported: older than the {fc.keep_days:g} days the "
             f"forecaster keeps")
    if ahead:
        _say(f"{ahead:,} row(s) after now ({_local(now, tz)} {tz.key}) not imported: is the file in another time "
             f"zone (--timezone), or this machine's clock wrong?")
    if far.any():
        shown = ", ".join(f"line {n}: {v:g} kW" for n, v in zip(lines[far][:3], values[far][:3]))
        _say(f"{int(far.sum()):,} row(s) far outside all the others ({shown}): a \"no data\" mark or a glitch? not "
             f"imported")
    if fc.rejected:
        # a 150 MW site under the default bound lost every peak here, and its thresholds came from the rest
        raise_it = ("; if they are the site's demand, raise bacnet.input_max_kw and import again"
                    if over * 20 >= fc.rejected + kept else "")
        _say(f"{fc.rejected:,} row(s) outside bacnet.input_min_kw..input_max_kw "
             f"({cfg.bacnet.input_min_kw:g}..{cfg.bacnet.input_max_kw:g} kW) not imported{raise_it}")
    return inside, kept


def _write(path: str, ks, sums, counts, sheds) -> tuple[int, int, bool, dict]:
    """(minutes added, events added, whether a model was stored, what the store holds after), in one transaction
    under the gateway's lock."""
    from forecaster.store import ForecastStore

    lock = RunLock(path)
    if busy := lock.take():     # a gateway started meanwhile: it would not see the rows; held while they go in
        raise _running(busy)
    # Ctrl-C held off while the rows go in (a second or so): before, nothing was imported, and after, all of it
    # was and is said so; one landing just after the commit said "nothing imported" of a file that held the rows
    ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = ForecastStore(path)
        if problem := _unit_problem(store, ks, sums, counts):
            raise _Refused(problem)
        had_model = store.contents()["model"]
        added, new_sheds = store.import_minutes(ks, sums, counts, sheds)
        return added, new_sheds, had_model, store.contents()
    except sqlite3.Error as err:
        raise _Refused(f"storage.path {path}: {with_fs_reason(str(err), path)}: nothing imported") from None
    except OSError as err:      # its directory cannot be made: a file in the way, no permission
        raise _Refused(f"storage.path {path}: cannot make {err.filename or 'its directory'}: {err.strerror or err}: "
                       f"nothing imported") from None
    finally:
        signal.signal(signal.SIGINT, ctrl_c)
        lock.close()


def _next_start(fc, held: dict) -> str:
    """What the next start makes of the history now held."""
    days = (held["last"] - held["first"]) / 86400
    if days * 24 < fc.min_fit_hours:
        return (f". The history held spans {days:.1f} days; the first model is fitted once it spans "
                f"{fc.min_fit_hours / 24:g} days")
    # the fit takes a minute or so, and only the CPU nothing else wants (SCHED_IDLE): 99 s beside a busy box's other
    # work, where "serves at once" left the operator waiting on a promise
    check = ("checked on its last week held out, it serves as soon as it is in if it beats persistence"
             if days > fc.validation_days else "it serves once a day of its live forecasts beats persistence")
    return (f". The history held spans {days:.1f} days: the next start fits a model on it at once, in a minute or so "
            f"(longer on a busy box: the fit takes idle CPU only), persistence serving meanwhile ({check})")

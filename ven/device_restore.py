"""What the gateway's BACnet device keeps across restarts: the objects it served (for databaseRevision) and the
BAS's commands on its commandable points, stored in storage.path and put back at the start."""
from __future__ import annotations

import json
import logging
import math

from bacnet_api import points as P
from bacnet_api.device import GatewayDevice

from .storage import Storage

log = logging.getLogger(__name__)

COMMANDS = "bacnet_commands:"    # + a commandable point's name: its commands by priority, as JSON
BACNET_DATABASE = "bacnet_database"  # the device's objects and databaseRevision, as the last run served them


def count_database_revision(device: GatewayDevice, storage: Storage) -> list[str] | None:
    """Set the device's databaseRevision: the last run's, one more if its objects differ from this run's. Returns
    the last run's objects (None: not known)."""
    # Over BACnet no object is created, deleted or renamed, but between two runs a new device_name or
    # device_id, or a release with other points, does so: a BAS that cached the objects learns it from
    # databaseRevision, which only means something if it is kept across restarts.
    identity = device.database_identity()
    saved = storage.load_value(BACNET_DATABASE)
    try:
        stored = json.loads(saved or "null")
        revision, known = int(stored["revision"]), stored["objects"]
        if not isinstance(known, list):
            raise TypeError(known)
        if revision < 0:    # the device refused it (an Unsigned) out of every start
            raise ValueError(f"databaseRevision {revision}")
    # the first run, or a file from before this was kept; or a value this version cannot read (a revision of
    # 1e400 raised OverflowError, JSON nested too deep RecursionError, out of every start)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as err:
        revision, known = device.database_revision, None
        if saved is not None:
            revision += 1
            log.warning("stored BACnet objects of the last run unreadable (%s: %.80s): databaseRevision %d, so a "
                        "BAS that cached them reads them again", type(err).__name__, err, revision)
        elif storage.found_file:
            # An earlier release served this device without keeping its objects, and those releases had
            # other points (13 before the load thresholds): counting one more costs a BAS a re-read, not
            # counting one leaves it with a stale list of objects.
            revision += 1
            log.info("BACnet objects of the last run not recorded in storage.path (an earlier version wrote "
                     "it): databaseRevision %d, so a BAS that cached them reads them again", revision)
    if known == identity:
        device.database_revision = revision
        return known
    if known is not None:
        revision += 1
        # what came and what went: a rename names both, and the reader must tell which is which
        came, went = sorted(set(identity) - set(known)), sorted(set(known) - set(identity))
        said = [f"{word} {', '.join(names)}" for word, names in (("new", came), ("gone", went)) if names]
        log.info("BACnet objects differ from the last run (%s): databaseRevision %d", "; ".join(said), revision)
    device.database_revision = revision
    storage.save_value(BACNET_DATABASE, json.dumps({"revision": revision, "objects": identity}))
    return known


def served(objects: list[str] | str | None, name: str) -> bool:
    """Whether the run whose objects these are (database_identity's "<type>,<instance> <name>", or BACNET_DATABASE as
    stored) served point `name`; True when they are not known."""
    if isinstance(objects, str):
        try:
            objects = json.loads(objects)["objects"]
        except (ValueError, TypeError, KeyError, RecursionError):
            objects = None
    if not isinstance(objects, list):
        return True
    return any(str(o).endswith(" " + name) for o in objects)


async def restore_commands(device: GatewayDevice, storage: Storage, name: str, saved: str | None,
                           late: bool = False, served_before: bool = True, note: str = "",
                           clamp: bool = True) -> bool:
    """Put a commandable point's stored commands back (SHED_COMMANDS, OPT_OUT_COMMANDS, INPUT_COMMANDS); whether any
    were. `served_before`: whether the last run served the point. `note`: said after the line that says them.
    `clamp`: a stored kW outside the point's bounds now is restored at the bound (else left out)."""
    if not saved:
        return False
    point = P.BY_NAME[name]
    low, high = device.input_bounds
    low = low if point.lowest is None else point.lowest
    try:
        commands = {int(priority): value for priority, value in json.loads(saved).items()}
        if point.kind == "binaryValue" and not all(1 <= p <= 16 and isinstance(v, bool)
                                                   for p, v in commands.items()):
            raise ValueError("priorities 1..16 with true or false expected")
        if point.kind == "analogValue" and not all(
                1 <= p <= 16 and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for p, v in commands.items()):
            raise ValueError("priorities 1..16 with finite kW expected")
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as err:
        # %.200r: JSON nested 10^5 deep (RecursionError) was a line of 200 KB
        log.warning("stored %s commands %.200r unreadable (%s): the point starts relinquished", name, saved, err)
        return False
    if not served_before:
        # Kept from a run before the last, which served no such point (an earlier version, rolled back to): the BAS's
        # relinquish at the end of its shed was refused there, and the shed came back, added to every sample learnt
        if commands:
            storage.save_value(COMMANDS + name, "{}")
            log.info("stored %s commands %.200s not restored: the last run (an earlier version?) served no %s, so "
                     "what the BAS wrote since never reached them", name, saved, name)
        return False
    outside = {p: v for p, v in commands.items() if point.kind == "analogValue" and not low <= v <= high}
    if outside:
        # bacnet.input_max_kw lowered since: the BAS still holds its command (a shed), which the point then takes at
        # the bound; a kW the bound now refuses (lowered to catch a BAS writing W) is no command at the bound, and the
        # BAS's next write of it is refused, which it sees
        if clamp:
            commands.update({p: min(max(v, low), high) for p, v in outside.items()})
        else:
            commands = {p: v for p, v in commands.items() if p not in outside}
            storage.save_value(COMMANDS + name, json.dumps(commands))
        log.warning("stored %s commands outside %g..%g kW (bacnet.input_min_kw..input_max_kw, or the point's "
                    "lowest, changed since?): %s, %s", name, low, high,
                    ", ".join(f"{v:g} at priority {p}" for p, v in sorted(outside.items())),
                    "restored at the bound" if clamp else "not restored")
    if late:
        # the BAS may have written or relinquished priorities since the start: those stay as it
        # left them, the stored commands fill the others, and the merge is what is kept
        touched = device.written_priorities(name)
        commands = {p: v for p, v in commands.items() if p not in touched}
    await device.restore_commands(name, commands)
    if late:
        storage.save_value(COMMANDS + name, json.dumps(device.commands(name)))
    if commands:
        def shown(v) -> str:
            return ("active" if v else "inactive") if point.kind == "binaryValue" else f"{v:g}"
        log.info("%s commands restored from before the restart: %s -> %s%s", name,
                 ", ".join(f"{shown(v)} at priority {p}" for p, v in sorted(commands.items())),
                 shown(device.get(name)), note)
    return bool(commands)

"""The gateway's device as an EDE file: B.I.G.-EU's Engineering-Data-Exchange CSV (layout 2.3), from which
most BAS workstations import a device's objects instead of typing them in.

Each row is read off the objects the device builds (`GatewayDevice.point_objects`), not off the point table,
so the file says what the device serves: names, types, instances, descriptions, units, which points take
commands, which take SubscribeCOV, and the ranges input-power-meter and bas-shed-power accept. Object types
and units are their BACnet enumeration numbers, as the layout asks. The binary objects'
inactiveText/activeText go to the companion state-text file (`state_texts_text`, written beside the EDE file
as `<name>_StateTexts.csv`), one row per distinct pair, "reference number;inactive text;active text", which
the main file's state-text-reference column names.
"""
from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from bacpypes3.local.cmd import Commandable
from bacpypes3.primitivedata import ObjectType

from .objects import float32

LAYOUT = "2.3"
COLUMNS = ("keyname", "device obj.-instance", "object-name", "object-type", "object-instance", "description",
           "present-value-default", "min-present-value", "max-present-value", "settable", "supports COV",
           "hi-limit", "low-limit", "state-text-reference", "unit-code", "vendor-specific-address")
_MANDATORY = 5   # the first five columns; the rest are optional


def _number(x: float) -> str:
    """The shortest decimal that is the same BACnet Real, written out (999.9, not 999.900024 or 1e+05)."""
    for digits in range(1, 18):
        text = f"{x:.{digits}g}"
        if float32(float(text)) == x:
            return format(Decimal(text), "f")
    return repr(x)


def _texts(obj: Any) -> tuple[str, str] | None:
    inactive, active = getattr(obj, "inactiveText", None), getattr(obj, "activeText", None)
    return None if inactive is None or active is None else (str(inactive), str(active))


def state_text_references(device: Any) -> dict[tuple[str, str], int]:
    """Each distinct (inactive, active) pair the point objects serve -> its reference number, from 1 in
    point-table order (objects showing the same texts share a row)."""
    refs: dict[tuple[str, str], int] = {}
    for obj in device.point_objects():
        texts = _texts(obj)
        if texts is not None:
            refs.setdefault(texts, len(refs) + 1)
    return refs


def _row(device_id: int, obj: Any, refs: dict[tuple[str, str], int]) -> dict[str, str]:
    name = str(obj.objectName)
    analog = "units" in obj._elements   # analog objects carry units; binary ones do not
    row = {"keyname": f"{device_id}.{name}", "device obj.-instance": str(device_id), "object-name": name,
           "object-type": str(int(obj.objectType)), "object-instance": str(obj.objectIdentifier[1]),
           "description": str(obj.description or ""),
           "settable": "Y" if isinstance(obj, Commandable) else "N",
           "supports COV": "Y" if getattr(obj, "_cov_criteria", None) is not None else "N"}
    if isinstance(obj, Commandable):   # what the point goes back to once every command is relinquished
        default = obj.relinquishDefault
        row["present-value-default"] = _number(float(default)) if analog else str(int(default))   # BinaryPV 0/1
    low, high = getattr(obj, "_low", -math.inf), getattr(obj, "_high", math.inf)
    if math.isfinite(low) and math.isfinite(high):   # a command outside is refused value-out-of-range
        row["min-present-value"], row["max-present-value"] = _number(low), _number(high)
    if analog:
        row["unit-code"] = str(int(obj.units))
    texts = _texts(obj)
    if texts is not None:
        row["state-text-reference"] = str(refs[texts])
    return row


def ede_rows(device: Any) -> list[dict[str, str]]:
    """The device object's row, then one per point in point-table order (a GatewayDevice, started or not)."""
    rows = [{"keyname": str(device.device_id), "device obj.-instance": str(device.device_id),
             "object-name": device.device_name, "object-type": str(int(ObjectType("device"))),
             "object-instance": str(device.device_id), "settable": "N", "supports COV": "N"}]
    refs = state_text_references(device)
    return rows + [_row(device.device_id, obj, refs) for obj in device.point_objects()]


def ede_text(device: Any, *, author: str, when: date | None = None) -> str:
    """The EDE file's text: semicolons, CRLF, each header line padded to the 16 columns as the B.I.G.-EU
    example (an Excel export) has them, since some importers count columns on every line."""
    out = io.StringIO()
    w = csv.writer(out, delimiter=";", lineterminator="\r\n")
    pad = [""] * (len(COLUMNS) - 2)
    w.writerow(["# Engineering-Data-Exchange - B.I.G.-EU", "", *pad])
    for key, value in (("PROJECT_NAME", device.device_name), ("VERSION_OF_REFERENCEFILE", "1"),
                       ("TIMESTAMP_OF_LAST_CHANGE", (when or date.today()).isoformat()),
                       ("AUTHOR_OF_LAST_CHANGE", author), ("VERSION_OF_LAYOUT", LAYOUT)):
        w.writerow([key, value, *pad])
    w.writerow(["#mandatory", *["mandatory"] * (_MANDATORY - 1), *["optional"] * (len(COLUMNS) - _MANDATORY)])
    w.writerow(["# " + COLUMNS[0], *COLUMNS[1:]])
    for row in ede_rows(device):
        w.writerow([row.get(column, "") for column in COLUMNS])
    return out.getvalue()


def state_texts_text(device: Any) -> str:
    """The state-text file's text: the two comment lines of B.I.G.-EU's example (an importer skips "#" lines
    and reads every other line as a reference number and its texts), padded to the same width, CRLF."""
    out = io.StringIO()
    w = csv.writer(out, delimiter=";", lineterminator="\r\n")
    w.writerow(["#State Text Reference", "", ""])
    w.writerow(["#Reference Number", "Text 1 or Inactive-Text", "Text 2 or Active-Text"])
    for (inactive, active), ref in state_text_references(device).items():
        w.writerow([str(ref), inactive, active])
    return out.getvalue()


def state_texts_path(path: str | os.PathLike) -> Path | None:
    """Where the state-text file of the EDE file `path` goes: beside it, gateway_EDE.csv ->
    gateway_EDE_StateTexts.csv. None when `path` is a pipe or device (/dev/stdout): nothing is beside it."""
    out = Path(path)
    if out.exists() and not out.is_file():
        return None
    return out.with_name(f"{out.stem}_StateTexts{out.suffix or '.csv'}")


def write_ede(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` whole: beside it, then renamed over it, so a failed write leaves the file
    that was there. A pipe or device (/dev/stdout) is written directly. Raises OSError."""
    out = Path(path)
    if out.exists() and not out.is_file():
        with out.open("w", newline="", encoding="utf-8") as fh:
            fh.write(text)
        return
    target = Path(os.path.realpath(out))
    # a name of its own, made here (O_EXCL): a fixed one beside a target in a shared directory could be a link
    # someone planted, and an installer running as root would write through it
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    part = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)   # as open() would have made it: mkstemp's 0600 would hide it from the BAS tool
    fh = os.fdopen(fd, "w", newline="", encoding="utf-8")
    try:
        with fh:
            fh.write(text)
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise

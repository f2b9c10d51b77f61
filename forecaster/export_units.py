"""The unit of a building's exported series: power (W, kW, MW) or energy per row's interval (Wh, kWh, MWh), from an
option, the value column's name, a column of units beside it or the cell; and the rows' one spacing, which energy
and times that name an interval's start are read with. Two sources that disagree are refused: 15-minute kWh read as
kW is a history 4 times too low."""
from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np


class ReplayInputError(ValueError):
    """The CSV cannot be replayed; the message names the file, row or column."""


# kW per unit of a value in W, kW or MW: from --value-unit, the column name ("P [W]", "Power_W"), a column of units
# ("UNITS") or the cell ("120 kW").
UNIT_KW = {"w": 0.001, "kw": 1.0, "mw": 1000.0}
# kWh per unit of energy a row's interval took (utility interval data, Green Button): the interval's mean kW is that
# over its hours, 15-minute kWh times 4
ENERGY_KWH = {"wh": 0.001, "kwh": 1.0, "mwh": 1000.0}
UNIT_NAMES = {"w": "W", "kw": "kW", "mw": "MW", "wh": "Wh", "kwh": "kWh", "mwh": "MWh"}
# a unit as a word of a column's name, bracketed or not ("Usage (kWh)", "Energy_kWh", "Watts", "kWh Delivered")
_NAME_UNIT = re.compile(r"(?<![a-z])([km]?w[-·]?h(?:rs?)?|[km]?w|(?:kilo|mega)?watts?(?:[-_ ]?(?:hours?|hrs?))?)"
                        r"(?![a-z])", re.IGNORECASE)
_OTHER_UNIT = re.compile(r"[\[(]\s*([kM]?(?:VAh?|varh?)|A)\s*[\])]|(?<![a-z])(k?VAh?|k?varh?)(?![a-z])",
                         re.IGNORECASE)
UNIT_COLUMNS = ("unit", "units", "uom", "unit of measure")
_CELL_UNIT = re.compile(r"(.*?)\s*(k?w|mw)", re.IGNORECASE)


def _unit_of(word: str) -> str:
    """"kWh", "kW-hr", "Watts", "kilowatt-hours" -> "kwh", "kwh", "w", "kwh"."""
    w = re.sub(r"(hours?|hrs?)$", "h", re.sub(r"[\s\-_·]", "", word.lower()))
    for long, short in (("megawatt", "mw"), ("kilowatt", "kw"), ("watt", "w")):
        if w.startswith(long):
            return short + ("h" if w.endswith("h") else "")
    return w


def split_unit(text: str) -> tuple[str, str | None]:
    m = _CELL_UNIT.fullmatch(text.strip())
    return (m.group(1), m.group(2).lower()) if m else (text.strip(), None)


def column_units(rows, delimiter: str, cols: list[str]):
    """(name, the units its cells give) of a column of units beside the values (a Green Button "UNITS"), or None.
    `rows`: (line number, line) of the lines under the header."""
    names = [c.strip().lower() for c in cols]
    idx = next((i for i, c in enumerate(names) if c in UNIT_COLUMNS), None)
    if idx is None:
        return None
    seen = set()
    for _, line in rows:
        cells = next(csv.reader([line], delimiter=delimiter), [])
        if idx < len(cells) and cells[idx].strip():
            seen.add(cells[idx].strip())
    if not all(_unit_of(u) in UNIT_NAMES or _OTHER_UNIT.fullmatch(u) for u in seen):
        return None     # a "Unit" of suite numbers, not of measure
    return cols[idx], seen


def unit_of_values(value_column: str, value_unit: str | None, path: Path, column_units=None) -> str:
    """The values' unit (a key of UNIT_KW or ENERGY_KWH): --value-unit, the column name's or a column of units',
    else kW. Two that disagree are refused: 15-minute kWh read as kW is a history 4 times too low."""
    named = {_unit_of(m.group(1)) for m in _NAME_UNIT.finditer(value_column)} & set(UNIT_NAMES)
    given = None if value_unit is None else _unit_of(value_unit)
    if given is not None and given not in UNIT_NAMES:
        raise ReplayInputError(f"{path}: value unit {value_unit!r} is not W, kW, MW (power) or Wh, kWh, MWh (energy "
                               "per row's interval)")
    if len(named) > 1 and given is None:
        raise ReplayInputError(f"{path}: column {value_column!r} names several units "
                               f"({', '.join(UNIT_NAMES[u] for u in sorted(named))}): give --value-unit")
    name_says = next(iter(named)) if len(named) == 1 else None    # several ("Bldg W kW"): the option says which
    if given is not None and name_says is not None and given != name_says:
        raise ReplayInputError(f"{path}: column {value_column!r} says {UNIT_NAMES[name_says]}, --value-unit says "
                               f"{value_unit}")
    other = _OTHER_UNIT.search(value_column)
    if other and given is None and not named:
        # apparent power or current, replayed as kW, would be forecasts of another quantity
        raise ReplayInputError(f"{path}: column {value_column!r} says {other.group(1) or other.group(2)}, not power "
                               "(W, kW, MW) or energy per interval (Wh, kWh, MWh); --value-unit reads it as one anyway")
    unit = given or name_says
    if column_units is not None:
        name, seen = column_units
        units = {_unit_of(u) for u in seen}
        if len(units) > 1 or not units <= set(UNIT_NAMES):
            raise ReplayInputError(f"{path}: column {name!r} gives the unit(s) {', '.join(sorted(seen))}: export the "
                                   "one quantity, in W, kW, MW, Wh, kWh or MWh, to a file of its own")
        if units:
            (said,) = units
            if unit is not None and unit != said:
                by = "--value-unit" if given is not None else f"column {value_column!r}"
                raise ReplayInputError(f"{path}: column {name!r} says {UNIT_NAMES[said]}, {by} says {UNIT_NAMES[unit]}")
            unit = said
    return unit or "kw"


def one_spacing(stamps: np.ndarray, path: Path, tz: ZoneInfo, energy: bool, starts: bool) -> float | None:
    """The rows' spacing (seconds), None for one row. Energy per interval and times naming an interval's start are
    read with it, so a file whose spacing changes (hourly for months, then 15-minute) is refused: read with the
    hourly one, its 15-minute kWh went in 4 times low and an hour late."""
    steps = np.diff(stamps)
    if not steps.size:
        return None
    spacing = float(np.median(steps))
    k = np.round(steps / spacing)
    # a step that is no multiple of the spacing (2 % off: a logger's second or two is fine), or three in a row of one
    # multiple: a gap is a step of its own, a coarser stretch (hourly days among 15-minute ones) is not
    off = np.abs(steps / spacing - k) > 0.02
    coarse = np.zeros(steps.size, dtype=bool)
    if steps.size > 2:
        coarse[:-2] = (k[:-2] >= 2) & (k[:-2] == k[1:-1]) & (k[1:-1] == k[2:])
    odd = np.flatnonzero(off | coarse)
    if (energy or starts) and (off.sum() > max(2, steps.size // 100) or coarse.any()):
        first = dt.datetime.fromtimestamp(stamps[odd[0]], tz)
        what = "energy per interval" if energy else "--stamped start"
        raise ReplayInputError(f"{path}: the rows are {spacing / 60:g} minutes apart mostly, but {odd.size:,} times "
                               f"{steps[odd[0]] / 60:g} minutes or other (first after {first:%Y-%m-%d %H:%M}): "
                               f"{what} needs one spacing. Export the parts of each spacing to files of their own")
    return spacing

"""Reading a building's kW series from what it exports: a CSV with a header line somewhere in its first
lines, separated by commas, semicolons or tabs, decimal points or commas, its times (export_times) and its unit
(export_units). Nothing is guessed that could read a number wrong: an ambiguous file is refused with the option
that settles it."""
from __future__ import annotations

import csv
import itertools
import math
import re
from array import array
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from .export_times import TIME_MAX, TIME_MIN, TimeFormatError, parse_time, time_problem
from .export_units import (ENERGY_KWH, UNIT_KW, UNIT_NAMES, ReplayInputError, column_units, one_spacing,
                           split_unit, unit_of_values)

__all__ = ["ReplayInputError", "TimeFormatError", "parse_time", "read_export", "read_series", "read_spans"]


# Skipped rows named one by one in the summary; a file with thousands of bad rows gets a count.
MAX_ROW_NOTES = 10


def _decode(path: Path, encoding: str | None = None) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ReplayInputError(f"{path}: cannot read: {err.strerror}") from None
    try:
        # utf-8-sig: spreadsheets save UTF-8 CSVs with a BOM, which would otherwise stick to the first column name.
        return data.decode(encoding or "utf-8-sig")
    except LookupError:
        raise ReplayInputError(f"{path}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        if encoding:
            raise ReplayInputError(f"{path}: line {line}, byte {col}: 0x{data[err.start]:02x} is not "
                                   f"{encoding}; pass the file's encoding with --encoding") from None
        raise ReplayInputError(f"{path}: line {line}, byte {col}: 0x{data[err.start]:02x} is not UTF-8; "
                               "pass the file's encoding (--encoding cp1252 for most Windows and Excel "
                               "exports) or save the file as UTF-8") from None


# Exports put the site, the point and the export time on up to a handful of lines above the header.
HEADER_SEARCH_LINES = 50
DELIMITERS = (",", ";", "\t")
# a number grouped in thousands never starts with 0: "0.250" and "0,250" are decimals whatever the file's mark
_GROUPED = {".": re.compile(r"[-+]?[1-9]\d{0,2}(,\d{3})+(\.\d*)?"),
            ",": re.compile(r"[-+]?[1-9]\d{0,2}(\.\d{3})+(,\d*)?")}
_AMBIGUOUS = re.compile(r"[-+]?[1-9]\d{0,2}[.,]\d{3}")


def _number(text: str, decimal: str) -> float:
    """A number with `decimal` as its decimal mark and, optionally, the other mark grouping thousands."""
    group = "," if decimal == "." else "."
    if group in text:
        if not _GROUPED[decimal].fullmatch(text):
            raise ValueError(text)
        text = text.replace(group, "")
    return float(text.replace(decimal, "."))


def _decimal_evidence(text: str) -> str | None:
    """The decimal mark `text` proves ("." or ","), "?" for 1.234 or 1,234 (a decimal or a thousands
    separator), None for neither."""
    text = text.strip()
    if "," in text and "." in text:
        mark = "," if text.rfind(",") > text.rfind(".") else "."
    else:
        for mark, other in ((".", ","), (",", ".")):
            if mark in text:
                if text.count(mark) > 1:
                    mark = other
                elif _AMBIGUOUS.fullmatch(text):
                    return "?"
                break
        else:
            return None
    try:
        _number(text, mark)
    except ValueError:
        return None     # "1.2.3", a version or an address in the column, proves no mark for the numbers beside it
    return mark


def _decimal_mark(values, path: Path) -> str:
    """The file's decimal mark, as its values prove it; a file that mixes both, or proves neither while
    holding values such as 1.234, is refused rather than read a thousand times too small or large."""
    seen: dict[str, tuple[int, str]] = {}
    for line_no, text in values:
        if text is not None:
            evidence = _decimal_evidence(split_unit(text)[0])
            if evidence is not None:
                seen.setdefault(evidence, (line_no, text.strip()))
    if "." in seen and "," in seen:
        (a, ta), (b, tb) = seen["."], seen[","]
        raise ReplayInputError(f"{path}: the values mix decimal points (line {a}: {ta!r}) and decimal commas "
                               f"(line {b}: {tb!r}); pass --decimal . or --decimal ,")
    if "?" in seen and len(seen) == 1:
        line_no, text = seen["?"]
        raise ReplayInputError(f"{path}: line {line_no}: value {text!r} has a decimal or a thousands separator; "
                               "pass --decimal . or --decimal ,")
    return "," if "," in seen else "."


# a line and its end as StringIO(newline="") splits them: at \r\n, \r or \n, kept
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _lines(text: str):
    """(line number, line) of each line that is neither blank nor a comment, read as they are needed: a year of
    10-second readings held as lines and rows peaked at 0.7 GB a million rows."""
    # not io.StringIO: it holds a copy of the text at 4 bytes a character
    for n, match in enumerate(_LINE.finditer(text), 1):
        line = match.group()
        if line.strip() and not line.lstrip().startswith("#"):
            yield n, line


def _find_header(lines: list[tuple[int, str]], columns: tuple[str, ...], path: Path):
    """(index into lines, delimiter, column names) of the first line that names all `columns` as fields
    separated by ',', ';' or a tab; metadata lines above it are passed over."""
    best = None   # (columns found, -index, fields) of the line closest to a header, for the error
    for i, (_, line) in enumerate(lines[:HEADER_SEARCH_LINES]):
        for delimiter in DELIMITERS:
            names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter), [])]
            found = sum(c in names for c in columns)
            if found == len(columns):
                return i, delimiter, names
            if best is None or (found, -i, len(names)) > best[:2] + (len(best[2]),):
                best = (found, -i, names)
    names = best[2]
    missing = next(c for c in columns if c not in names)
    raise ReplayInputError(f"{path}: no column {missing!r}; columns are {', '.join(names) or '(none)'}")


def _find_columns(lines: list[tuple[int, str]], time_columns: tuple[str, ...], value_column: str, path: Path):
    """(index of the header in lines, delimiter, column names, time column indexes, value column index)."""
    if not lines:
        raise ReplayInputError(f"{path}: the file is empty (no header row)")
    header, delimiter, cols = _find_header(lines, time_columns + (value_column,), path)
    return header, delimiter, cols, [cols.index(c) for c in time_columns], cols.index(value_column)


def _raw_rows(text: str, header: int, delimiter: str, cols: list[str], t_idx: list[int], v_idx: int):
    """(line, time text, value text, fields beyond the header) of each row under the header (the header the
    `header`th line of _lines), one at a time; a time in several columns is their texts joined by a space, a cell the
    row lacks is None."""
    line_no = 0

    def data_lines():
        nonlocal line_no
        for line_no, line in itertools.islice(_lines(text), header + 1, None):
            yield line

    for row in csv.reader(data_lines(), delimiter=delimiter):
        cell = lambda i: row[i] if i < len(row) else None  # noqa: E731
        ts = [cell(i) for i in t_idx]
        t_text = None if None in ts else " ".join(s.strip() for s in ts)
        extra = [f for f in row[len(cols):] if f.strip()]
        yield line_no, t_text, cell(v_idx), extra


def _convert_row(t_text: str | None, v_text: str | None, extra: list[str], width: int, tz: ZoneInfo, folds: dict,
                 time_format: str | None, mark: str, unit: str):
    """(epoch seconds, kW, problem, the unit its cell named) from one row's texts; problem, None for a usable row,
    says what is wrong."""
    t = v = problem = cell_unit = None
    if extra:
        # "2019-10-07 00:00,113,2": a decimal comma in a comma-separated file would read as 113
        problem = (f"has {width + len(extra)} fields, the header {width} (an unquoted decimal comma "
                   f"in a comma-separated file?)")
    else:
        try:
            t = parse_time(t_text, tz, folds, time_format)
            problem = time_problem(t, time_format)
            if problem is None:
                try:
                    number, cell_unit = split_unit(v_text)
                    if cell_unit is not None and unit in ENERGY_KWH:    # then read as energy: 4 times the kW
                        raise ValueError("power in a column of energy")
                    v = _number(number, mark) * UNIT_KW.get(cell_unit or unit, 1.0)   # energy: read_export
                except (TypeError, ValueError, AttributeError) as err:
                    problem = "value " + (f"{v_text!r} is not a number" if v_text is not None else "is missing")
                    if str(err) == "power in a column of energy":
                        problem = f"value {v_text!r} is power, in a column of energy ({UNIT_NAMES[unit]})"
                else:
                    if not math.isfinite(v):   # named here by line, not just counted by the forecaster
                        problem = f"value {v_text.strip()!r} is not a finite number"
            else:
                problem = f"time {t_text.strip()!r} {problem}"
        except TimeFormatError as err:
            problem = f"time {t_text!r} {err}"
        except (TypeError, ValueError, AttributeError):
            problem = f"time {t_text.strip()!r} is not a timestamp" if t_text is not None else "time is missing"
    return t, v, problem, cell_unit


def _how_read(path: Path, header_line: int | None, delimiter: str, mark: str, unit: str, cell_units: set) -> str | None:
    """A note saying how the file was read, None for plain comma-separated kW from its first line."""
    how = []
    if header_line:
        how.append(f"header on line {header_line}")
    if delimiter != ",":
        how.append({";": "';'-separated", "\t": "tab-separated"}[delimiter])
    if mark == ",":
        how.append("decimal comma")
    if unit in UNIT_KW and unit != "kw":
        how.append(f"values in {UNIT_NAMES[unit]}, converted to kW")
    if cell_units - {"kw"}:   # "98000 W": said, as a unit in the header or an option is
        how.append(f"values with their unit ({', '.join(UNIT_NAMES[u] for u in sorted(cell_units))}), "
                   "converted to kW")
    return f"read {path.name}: " + ", ".join(how) if how else None


def read_export(csv_path, time_column, value_column: str, tz: ZoneInfo, time_format: str | None = None,
                encoding: str | None = None, decimal: str | None = None, value_unit: str | None = None,
                stamped: str = "end", tally: dict | None = None):
    """(times, values in kW, line numbers) sorted by time, (skipped row count, notes naming them), and a
    note saying how the file was read when that is not plain comma-separated kW from its first line.
    `stamped` "start": each time names the start of the interval its value covers (a minute of /api/history.csv,
    interval data stamped at its start), moved to that interval's end, the rows' usual spacing later: the gateway
    files a reading by when it was read, and an interval's mean is known at its end.
    `tally`, a dict, gets "empty": the rows skipped for having a time and no value (no reading then, not damage),
    and "moved": the seconds `stamped` "start" moved each time by."""
    path = Path(csv_path)
    text = _decode(path, encoding)
    time_columns = (time_column,) if isinstance(time_column, str) else tuple(time_column)
    head = list(itertools.islice(_lines(text), HEADER_SEARCH_LINES))
    header, delimiter, cols, t_idx, v_idx = _find_columns(head, time_columns, value_column, path)
    if decimal not in (None, ".", ","):
        raise ReplayInputError(f"decimal mark {decimal!r} is not '.' or ','")
    unit = unit_of_values(value_column, value_unit, path,
                          column_units(itertools.islice(_lines(text), header + 1, None), delimiter, cols))
    # the rows are read twice rather than held: once for the decimal mark the whole file proves, once for the values
    mark = decimal or _decimal_mark(((n, v) for n, _, v, _ in _raw_rows(text, header, delimiter, cols, t_idx, v_idx)),
                                    path)

    times, values, kept, notes, skipped, stamps, empty = array("d"), array("d"), array("q"), [], 0, array("d"), 0
    folds: dict = {}
    cell_units: set = set()
    for line_no, t_text, v_text, extra in _raw_rows(text, header, delimiter, cols, t_idx, v_idx):
        t, v, problem, cell_unit = _convert_row(t_text, v_text, extra, len(cols), tz, folds, time_format, mark,
                                                unit)
        if t is not None and (problem is None or problem.startswith("value")):
            stamps.append(t)    # a row without a value still marks an interval's start
        if problem is not None:
            skipped += 1
            if problem.startswith("value") and v_text is not None and not v_text.strip():
                empty += 1      # a time with no reading (a gap in /api/history.csv): not a damaged row
            elif skipped - empty <= MAX_ROW_NOTES:
                notes.append(f"line {line_no}: {problem}; row skipped")
            continue
        times.append(t)
        values.append(v)
        kept.append(line_no)
        if cell_unit is not None:
            cell_units.add(cell_unit)
    if skipped - empty > MAX_ROW_NOTES:
        notes.append(f"... and {skipped - empty - MAX_ROW_NOTES} more rows skipped")
    if empty:
        notes.append(f"{empty:,} row(s) with a time and no value (no reading then) skipped")
    if tally is not None:
        tally["empty"] = empty
    if not times:
        why = f" ({notes[0].removesuffix('; row skipped')})" if notes else ""
        columns = ", ".join(repr(c) for c in time_columns + (value_column,))
        raise ReplayInputError(f"{path}: no usable rows in columns {columns}{why}")
    reading = _how_read(path, head[header][0] if header else None, delimiter, mark, unit, cell_units)
    t, v, ln = np.frombuffer(times), np.frombuffer(values), np.frombuffer(kept, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    t, v, ln = t[order], v[order], ln[order]
    spacing = one_spacing(np.unique(np.frombuffer(stamps)), path, tz, unit in ENERGY_KWH, stamped == "start")
    if unit in ENERGY_KWH:
        if spacing is None:
            raise ReplayInputError(f"{path}: values in {UNIT_NAMES[unit]} need two rows or more: a row's energy is "
                                   "read as its interval's mean kW, the interval the rows' spacing")
        scale = ENERGY_KWH[unit] * 3600.0 / spacing
        v = v * scale
        notes.insert(0, f"values in {UNIT_NAMES[unit]} per {spacing / 60:g}-minute interval, read as each interval's "
                        f"mean kW (x {scale:g})")
    if stamped == "start" and spacing is not None:
        t = t + spacing
        notes.append(f"times read as the start of each row's {spacing:g} s interval: filed at its end")
        if tally is not None:
            tally["moved"] = spacing
    # read, but not as the file may mean: said, so that a bad export is not replayed as if it were right
    gap = folds.get("skipped", [])
    if gap:
        notes.append(f"{len(gap)} row(s) at a time the clocks skipped in {tz.key} (e.g. {gap[0]:%Y-%m-%d %H:%M}, "
                     f"the clocks going forward): read as the hour after")
    clash = np.flatnonzero((np.diff(t) == 0) & (np.diff(v) != 0))
    if clash.size:
        i = clash[0]
        notes.append(f"{clash.size} time(s) given again with another value (e.g. lines {ln[i]} and {ln[i + 1]}: "
                     f"{v[i]:g} and {v[i + 1]:g} kW): their values averaged")
    return t, v, ln, skipped, notes, reading


def read_series(csv_path, time_column, value_column: str, tz: ZoneInfo,
                **reading) -> tuple[np.ndarray, np.ndarray, int]:
    """(times, kW values, skipped rows) sorted by time; lines starting with '#' are comments. Rows whose time
    or value cannot be read, or whose time is not finite or outside 1970-2100, are skipped.

    The header is the first line naming the columns, separated by ',', ';' or a tab; `time_column` may be
    several columns (a date and a time), joined by a space. `reading`: time_format (see parse_time),
    encoding (default UTF-8), decimal ("." or ","; default: what the values prove), value_unit
    ("W", "kW" or "MW"; default: the column name's "[W]", else kW; a unit in a cell is that value's)."""
    t, v, _, skipped, _, _ = read_export(csv_path, time_column, value_column, tz, **reading)
    return t, v, skipped


def read_spans(csv_path, tz: ZoneInfo, time_format: str | None = None,
               encoding: str | None = None) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each row of a CSV whose header names `start` and `end` columns: the
    demand-response events a building shed for. Times read as the series' (parse_time, its --time-format and
    encoding); '#' starts a comment.
    A row that cannot be read is refused, naming its line: a wrong event would be learned as a normal day."""
    path = Path(csv_path)
    lines = [(i + 1, line) for i, line in enumerate(_decode(path, encoding).splitlines())
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ReplayInputError(f"{path}: no header naming the columns start and end")
    n, header = lines[0]
    delimiter = max(DELIMITERS, key=header.count)
    names = [c.strip().lower() for c in next(csv.reader([header], delimiter=delimiter))]
    if "start" not in names or "end" not in names:
        raise ReplayInputError(f"{path}: line {n}: the header must name the columns start and end, not {names}")
    a, b = names.index("start"), names.index("end")
    out = []
    for n, line in lines[1:]:
        cells = next(csv.reader([line], delimiter=delimiter))
        if max(a, b) >= len(cells) or not cells[a].strip() or not cells[b].strip():
            raise ReplayInputError(f"{path}: line {n}: no start or no end")
        try:
            start, end = (parse_time(cells[i], tz, time_format=time_format) for i in (a, b))
        except TimeFormatError as err:
            raise ReplayInputError(f"{path}: line {n}: a time {err}") from None
        if not (TIME_MIN <= start <= end <= TIME_MAX):
            raise ReplayInputError(f"{path}: line {n}: the end must not come before the start, both in 1970-2100")
        if end > start:     # an event of no length shed nothing
            out.append((start, end))
    return out

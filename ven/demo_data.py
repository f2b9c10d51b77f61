"""The real building shipped with the package, for the demo and the meter simulator.

A whole office building in Turin, 15-minute kW in 2019 (see ven/data/README.md for source and licence).
"""
from __future__ import annotations

import csv
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

SHIPPED = "turin_office_2019.csv"


def shipped_path() -> Path:
    return Path(str(resources.files("ven") / "data" / SHIPPED))


def _rows(path: str | Path):
    with open(path, newline="") as f:
        yield from csv.DictReader(line for line in f if not line.startswith("#"))


def load_kw_column(path: str | Path | None = None, column: str = "Total_Power") -> list[float]:
    """The kW column as floats, in file order; a missing column is named in the error."""
    values = []
    for i, row in enumerate(_rows(path or shipped_path()), start=2):
        if column not in row:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(row)})")
        try:
            values.append(float(row[column]))
        except ValueError:
            raise ValueError(f"{path}: line {i}: {column}={row[column]!r} is not a number") from None
    return values


def load_series(path: str | Path | None = None, time_column: str = "timestamp",
                column: str = "Total_Power") -> tuple[list[float], list[float]]:
    """(epoch seconds, kW) pairs of the shipped building or another CSV with naive UTC timestamps."""
    times, values = [], []
    for row in _rows(path or shipped_path()):
        ts = datetime.fromisoformat(row[time_column])
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        times.append(ts.timestamp())
        values.append(float(row[column]))
    return times, values

"""Wall time and peak memory of `edge-gateway import-history`, and of the first start after it.

    python bench/import_speed.py [--days 44]

Writes DAYS of a building's demand (the shape bench/_common.py's building_profile draws) at three spacings a site
exports (15-minute interval data, a 1-minute trend log, a 10-second one) as CSV, runs `python -m ven.cli
import-history` on each into a new storage file as a real subprocess, and prints its wall time and peak RSS. Then,
for the largest, how long a ForecastService takes from start() to its first forecast, and to its first fit (in
its fit process, as on a site). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

SPACINGS = (("15 min", 900), ("1 min", 60), ("10 s", 10))


def _write(path: Path, days: float, step: int) -> int:
    """DAYS up to now at `step` seconds: the building's 15-minute demand drawn through, as a trend log samples it."""
    now = time.time()
    t, v = C.building_profile(now).history(now)
    grid = np.arange(now - days * 86400, now, step)
    kw = np.interp(grid, t, v)
    with path.open("w") as fh:
        fh.write("timestamp,kw\n")
        for g, x in zip(grid.tolist(), kw.tolist()):
            fh.write(f"{dt.datetime.fromtimestamp(g, dt.timezone.utc).isoformat()},{x:.2f}\n")
    return grid.size


def _import(cfg: Path, csv_path: Path) -> tuple[float, float, str]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ven.cli", "import-history", "--config", str(cfg), "--csv",
                           str(csv_path), "--time-column", "timestamp", "--value-column", "kw"],
                          capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if done.returncode:
        raise SystemExit(done.stderr)
    return wall, peak, done.stdout.strip()


async def _first_start(storage: str) -> tuple[float, float]:
    from ven.config import ForecasterConfig
    from ven.forecast_service import ForecastService

    published = []
    svc = ForecastService(ForecasterConfig(source="meter"), storage, publish=published.append)
    began = time.monotonic()
    await svc.start()
    try:
        await C.wait_until(lambda: published, 120)
        first = time.monotonic() - began
        await C.wait_until(lambda: svc.status()["last_fit_at"] is not None, 1200, interval=0.5)
        fitted = time.monotonic() - began
    finally:
        await svc.stop()
    return first, fitted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=44.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        for name, step in SPACINGS:
            d = Path(tmp) / str(step)
            d.mkdir()
            cfg = d / "gateway.toml"
            cfg.write_text(C.to_toml(C.gateway_config_dict(str(d / "gateway.sqlite"), C.free_port(), 9, 9, 9)))
            n = _write(d / "meter.csv", args.days, step)
            wall, peak, said = _import(cfg, d / "meter.csv")
            size = (d / "gateway.sqlite").stat().st_size / 1e6
            rows.append([name, f"{n:,}", f"{wall:.1f}", f"{peak:.0f}", f"{size:.1f}"])
        first, fitted = asyncio.run(_first_start(str(Path(tmp) / "10" / "gateway.sqlite")))
    print(f"import-history, {args.days:g} days, {os.cpu_count()} CPUs (peak RSS: the largest child so far)")
    print(C.table(["spacing", "rows", "wall s", "peak RSS MB", "file MB"], rows))
    print(f"first start on the 10 s import: first forecast {first:.1f} s, first fit done {fitted:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

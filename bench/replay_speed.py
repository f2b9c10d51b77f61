"""Wall time and peak memory of `edge-gateway forecast-replay` on the Turin office year.

    python bench/replay_speed.py [--days 365] [--retrain-minutes 1440]

Writes the year (35,040 rows of 15-minute kW, from the wheel bench/forecast_accuracy.py caches) to a
CSV, runs `python -m ven.cli forecast-replay` on it as a real subprocess with the live defaults
(35 days of history, a refit every day of simulated time), and prints the command's own summary
(fits, seconds spent fitting) beside the wall time and the child's peak RSS. Nothing is asserted.
Goal (issue 4): a year of 15-minute data in a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from forecast_accuracy import load_turin  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=365.0, help="replay the first DAYS of 2019")
    ap.add_argument("--retrain-minutes", type=float, default=1440.0)
    ap.add_argument("--keep", type=Path, help="copy the replayed rows here (to compare runs or score them)")
    args = ap.parse_args()
    t, v = load_turin()
    n = min(t.size, int(args.days * 96))
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        src, out = Path(tmp) / "turin.csv", Path(tmp) / "pred.csv"
        with src.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "kw"])
            for x, y in zip(t[:n], v[:n]):
                w.writerow([dt.datetime.fromtimestamp(x, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), y])
        cmd = [sys.executable, "-m", "ven.cli", "forecast-replay", "--csv", str(src), "--time-column", "timestamp",
               "--value-column", "kw", "--output", str(out), "--retrain-minutes", str(args.retrain_minutes)]
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=str(C.ROOT), capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(C.ROOT)))
        wall = time.monotonic() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)    # the command and its fit processes
        peak, cpu = usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
        if done.returncode != 0:
            print(done.stderr)
            return 1
        summary = {k: float(x) for k, x in re.findall(r"\b(cycles|fits|fit_seconds)=([0-9.]+)", done.stdout)}
        rows = sum(1 for _ in out.open()) - 1
        if args.keep is not None:
            shutil.copyfile(out, args.keep)
    print(f"forecast-replay of {n} rows ({n / 96:g} days), refit every {args.retrain_minutes:g} min; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(C.table(["rows in", "rows out", "cycles", "fits", "fit s", "wall s", "wall min", "CPU s", "peak RSS MB"],
                  [[n, rows, int(summary["cycles"]), int(summary["fits"]), summary["fit_seconds"], wall, wall / 60, cpu,
                    peak]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

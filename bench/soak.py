"""A long healthy run of `edge-gateway run`, and restart churn, as the operator sees them.

    python bench/soak.py [--minutes 25] [--restarts 0] [--kill-every 5] [--poll-seconds 10]

The peers (demo VTN, routed meter simulator, BAS simulator) run in their own process for the whole
run; the gateway is a real subprocess at INFO with the shipped building's history in its SQLite file
(`_common.seed_history`). Every `--sample-seconds` the gateway's RSS, open file descriptors, threads,
fit children and the sizes of the SQLite file and its WAL are sampled, and /metrics is scraped (series
count, counters that went down). At the end: a table of the samples, the log lines after start-up
counted by kind (digits masked) and per hour, and what the VTN received (samples, duplicates, gaps
where an interval is missing).

With `--restarts N` the gateway is instead stopped and started N times against the same file and
peers, each run `--run-seconds` long; every `--kill-every`th stop is SIGKILL, the others SIGTERM.
Afterwards no ven.fit_worker child may be left and each run must log one start and one stop line.
Prints tables; nothing is asserted.
"""
from __future__ import annotations

import argparse
import calendar
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

STARTED = "edge-gateway ready"
STOPPED = "edge-gateway stopped"


def proc_stats(pid: int) -> dict:
    rss, hwm = C.rss_mb(pid)
    threads = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("Threads:")).split()[1])
    return {"rss": rss, "hwm": hwm, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


def children(pid: int, marker: bytes = b"") -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit():
                continue
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and marker in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def orphan_fits() -> list[int]:
    """ven.fit_worker processes whose gateway is gone (adopted by init or a subreaper), zombies aside."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or b"ven.fit_worker" not in (d / "cmdline").read_bytes():
                continue
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            parent = (Path("/proc") / ppid / "cmdline").read_bytes()
            if state != "Z" and b"ven.cli" not in parent:
                found.append(int(d.name))
        except (OSError, ValueError):
            continue
    return found


def file_sizes(storage: Path) -> tuple[float, float]:
    def kb(p: Path) -> float:
        try:
            return p.stat().st_size / 1024
        except OSError:
            return 0.0
    return kb(storage), kb(storage.with_name(storage.name + "-wal"))


def scrape(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                series[name] = float(value)
            except ValueError:
                pass
    return series


def line_kind(line: str) -> str:
    text = line.split(" ", 1)[1] if " " in line else line
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<time>", text)
    return re.sub(r"\d+(\.\d+)?", "#", text)[:110]


class Run:
    def __init__(self, args, work: Path):
        self.args = args
        self.storage = work / "gateway.sqlite"
        self.log_path = work / "gateway.log"
        self.meter_port, self.bacnet_port, self.bas_port = C.free_port(), C.free_port(), C.free_port()
        self.vtn_port, self.http_port = C.free_tcp_port(), C.free_tcp_port()
        cfg = C.gateway_config_dict(str(self.storage), self.bacnet_port, self.meter_port, self.vtn_port,
                                    self.http_port, poll_seconds=args.poll_seconds,
                                    telemetry_seconds=args.poll_seconds, retrain_minutes=args.retrain_minutes,
                                    log_level="INFO")
        self.config = work / "gateway.toml"
        self.config.write_text(C.to_toml(cfg))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ven.cli", "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.log_path.read_text(errors="replace").count(STARTED) < self.starts:
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM) -> int | None:
        fits = children(self.proc.pid, b"ven.fit_worker")
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
            self.proc.wait(5)
        if sig == signal.SIGKILL:  # its fit child, if any, notices the closed pipe on its own
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in fits):
                time.sleep(0.2)
        return rc


def soak(args, run: Run) -> None:
    run.start()
    t_ready = time.time()
    rows, first_scrape, last_scrape, went_down, max_series = [], None, None, set(), 0
    end = t_ready + args.minutes * 60
    while time.time() < end:
        st = proc_stats(run.proc.pid)
        db, wal = file_sizes(run.storage)
        m = scrape(run.http_port)
        max_series = max(max_series, len(m))
        if first_scrape is None:
            first_scrape = m
        if last_scrape is not None:
            for k, v in m.items():
                if (k.endswith("_total") or k.endswith("_count") or k.endswith("_sum") or "_bucket{" in k) \
                        and k in last_scrape and v < last_scrape[k]:
                    went_down.add(k)
        last_scrape = m
        rows.append([f"{(time.time() - t_ready) / 60:.0f}", st["rss"], st["fds"], st["threads"],
                     len(children(run.proc.pid, b"ven.fit_worker")), db, wal, len(m),
                     m.get("edge_gateway_telemetry_sent_total", float("nan")),
                     m.get("edge_gateway_telemetry_queue_depth", float("nan"))])
        time.sleep(max(0.0, min(args.sample_seconds, end - time.time())))
    rc = run.stop()
    print(C.table(["min", "RSS MB", "fds", "threads", "fits", "db KB", "wal KB", "series", "sent", "queue"], rows))
    print(f"\nexit code {rc}; metrics series first {len(first_scrape)} max {max_series}; counters that went down: "
          f"{sorted(went_down) or 'none'}; new series: {sorted(set(last_scrape) - set(first_scrape)) or 'none'}")
    log_table(run, t_ready + args.settle_seconds, time.time(), args.settle_seconds)


def log_table(run: Run, since: float, until: float, settle: float) -> None:
    kinds = collections.Counter()
    for line in run.log_path.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) ", line)
        if not m:
            kinds["(continuation) " + line[:100]] += 1
            continue
        t = calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%SZ"))
        if since <= t <= until:
            kinds[line_kind(line)] += 1
    hours = (until - since) / 3600
    print(f"\nlog lines from {settle:g} s after ready to the end ({hours * 60:.1f} min): {sum(kinds.values())}, "
          f"{sum(kinds.values()) / hours:.1f}/hour")
    print(C.table(["count", "per hour", "kind"], [[n, n / hours, k] for k, n in kinds.most_common()]) if kinds else "")


def churn(args, run: Run) -> None:
    rows = []
    for i in range(args.restarts):
        run.start()
        time.sleep(args.run_seconds)
        st = proc_stats(run.proc.pid)
        sig = signal.SIGKILL if args.kill_every and (i + 1) % args.kill_every == 0 else signal.SIGTERM
        if sig == signal.SIGKILL and args.kill_offset is not None:
            # just after an interval boundary: while its report is on the wire or being acknowledged
            period = args.poll_seconds
            time.sleep(period - time.time() % period + args.kill_offset * (1 + i % 4))
        rc = run.stop(sig)
        db, wal = file_sizes(run.storage)
        rows.append([i + 1, sig.name, rc, st["rss"], st["fds"], st["threads"], db, wal, len(orphan_fits())])
    print(C.table(["run", "stop", "exit", "RSS MB", "fds", "threads", "db KB", "wal KB", "orphan fits"], rows))
    text = run.log_path.read_text(errors="replace")
    print(f"\nstart lines {text.count(STARTED)}, stop lines {text.count(STOPPED)} "
          f"(SIGTERM stops {sum(1 for r in rows if r[1] == 'SIGTERM')}); orphaned fit_worker processes: {orphan_fits()}")
    kinds = collections.Counter(line_kind(l) for l in text.splitlines() if re.match(r"\d{4}-", l))
    print(C.table(["count", "kind"], [[n, k] for k, n in kinds.most_common()]))


def vtn_table(summary: dict, interval: float) -> None:
    times = sorted(summary.get("vtn_report_times", []))
    dups = len(times) - len(set(times))
    uniq = sorted(set(times))
    holes = [(a, b) for a, b in zip(uniq, uniq[1:]) if b - a > 1.5 * interval]
    print(f"\nVTN received {len(times)} samples ({len(uniq)} distinct interval starts, {dups} duplicates), "
          f"registrations {summary.get('vtn_registrations')}; gaps of a missing interval or more: {len(holes)}")
    for t, n in collections.Counter(times).items():
        if n > 1:
            print(f"  duplicate {time.strftime('%H:%M:%S', time.gmtime(t))} x{n}")
    for a, b in holes[:40]:
        print(f"  hole {time.strftime('%H:%M:%S', time.gmtime(a))} .. {time.strftime('%H:%M:%S', time.gmtime(b))}"
              f" ({b - a:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--sample-seconds", type=float, default=60.0)
    ap.add_argument("--settle-seconds", type=float, default=120.0, help="start-up lines not counted")
    ap.add_argument("--poll-seconds", type=float, default=10.0)
    ap.add_argument("--retrain-minutes", type=float, default=1440.0)
    ap.add_argument("--restarts", type=int, default=0)
    ap.add_argument("--run-seconds", type=float, default=20.0)
    ap.add_argument("--kill-every", type=int, default=5)
    ap.add_argument("--kill-offset", type=float, default=None,
                    help="SIGKILL this many s (x1..x4, in turn) after an interval boundary instead of at random")
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(work)  # BAC0 writes ~/.BAC0
    run = Run(args, work)
    C.seed_history(str(run.storage))
    print(f"work dir {work}; seeded {run.storage.stat().st_size / 1024:.0f} KB of history")
    peers = C.Peers(run.meter_port, run.vtn_port, vtn_poll_seconds=10.0, bas_port=run.bas_port,
                    gateway=f"127.0.0.1:{run.bacnet_port}").start()
    try:
        if args.restarts:
            churn(args, run)
        else:
            soak(args, run)
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.stop()
        summary = peers.stop()
    vtn_table(summary, args.poll_seconds)


if __name__ == "__main__":
    main()

"""Start-up time and memory of `edge-gateway run` as a real subprocess.

    python bench/memory_startup.py [--starts 3] [--work 60] [--rest 60]

Start-up: `python -m ven.cli run --config FILE` is launched `--starts` times (production cadence,
35 days of the shipped building's history in its SQLite file); from the moment of launch a second
BACnet stack in this process sends directed Who-Is to the gateway's port every 50 ms, and the time of
the first I-Am is "online". "ready" is when the gateway logs `edge-gateway ready` (meter, VTN client
and HTTP API started). Then SIGTERM, and the exit code and shutdown time are recorded. The first launch is
left `--rest` seconds at rest before it, its CPU time measured.

Memory: one more launch with an hour of work compressed into `--work` seconds: meter polled every
work/360 s (360 reads, as at 10 s in an hour), forecast every work/60 s (60 cycles, as at 60 s),
telemetry reported every second, a retrain every work/120 min (the first fit at start plus about
two), and this process reading meter-power 5,000 times, 50 in flight, as a busy BAS would. RSS
(VmRSS) and its peak (VmHWM) come from /proc. Fits run in short-lived child processes
(`ven.fit_worker`); their peak is sampled every 20 ms and shown beside the gateway's. The VTN and the meter simulator run in a third
process. Prints tables; nothing is asserted. Goals (issue 7): RSS at most 200 MB, online within 3 s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


class FitPeak:
    """Largest VmHWM seen among a process's ven.fit_worker children, sampled by a thread."""

    def __init__(self, parent: int):
        self.parent, self.peak_mb, self.seen = parent, 0.0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for d in Path("/proc").iterdir():
                try:
                    if not d.name.isdigit() or b"ven.fit_worker" not in (d / "cmdline").read_bytes():
                        continue
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != self.parent:
                        continue
                    self.seen.add(d.name)
                    self.peak_mb = max(self.peak_mb, C.rss_mb(d.name)[1])
                except (OSError, ValueError, IndexError):  # it exited while we looked
                    continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


class Launch:
    """One `edge-gateway run` subprocess and what it printed, with the time each line arrived."""

    def __init__(self, config_path: Path, home: Path, python_flags: list[str]):
        env = dict(os.environ, HOME=str(home), PYTHONPATH=str(C.ROOT))
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, *python_flags, "-m", "ven.cli", "run", "--config", str(config_path)],
                                     cwd=str(C.ROOT), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip()))

    def when(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def stop(self, timeout: float = 20.0) -> tuple[int | None, float]:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the process this bench started
            code = self.proc.wait(5)
        self._reader.join(5)
        return code, time.monotonic() - t


async def until_online(peer, address: str, launch: Launch, timeout: float = 30.0) -> float | None:
    while time.monotonic() - launch.t0 < timeout and launch.proc.poll() is None:
        if await peer.who_is(address, C.GATEWAY_DEVICE_ID, C.GATEWAY_DEVICE_ID, wait=0.05):
            return time.monotonic() - launch.t0
    return None


def http_status(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
            return json.load(r)
    except (OSError, ValueError):
        return {}


async def bench(args, tmp: Path, peers_ports: dict) -> tuple[list, dict]:
    from bacnet_api.peer import BacnetPeer

    home = tmp / "home"
    home.mkdir()
    starts = []
    async with BacnetPeer(C.free_port(), device_id=4000301, timeout=2.0) as peer:
        for i in range(args.starts + 1):
            work = i == args.starts
            storage = tmp / f"gw{i}.sqlite"
            C.seed_history(str(storage))
            bacnet_port, http_port = C.free_port(), C.free_tcp_port()
            if work:
                w = args.work
                cfg = C.gateway_config_dict(str(storage), bacnet_port, http_port=http_port, poll_seconds=w / 360,
                                            cycle_seconds=w / 60, telemetry_seconds=1.0, retrain_minutes=w / 120,
                                            log_level="INFO", **peers_ports)
            else:
                cfg = C.gateway_config_dict(str(storage), bacnet_port, http_port=http_port, log_level="INFO",
                                            **peers_ports)
            path = tmp / f"gw{i}.toml"
            path.write_text(C.to_toml(cfg))
            address = f"127.0.0.1:{bacnet_port}"
            launch = Launch(path, home, args.python_flags.split())
            try:
                online = await until_online(peer, address, launch)
                rss_online = C.rss_mb(launch.proc.pid) if launch.proc.poll() is None else (float("nan"),) * 2
                ready = await C.wait_until(lambda: launch.when("edge-gateway ready"), 30, 0.1)
                rss_ready = C.rss_mb(launch.proc.pid) if launch.proc.poll() is None else (float("nan"),) * 2
                if not work:
                    await asyncio.sleep(1.0)
                    rss_settled = C.rss_mb(launch.proc.pid)
                    rest = await _cpu_at_rest(launch.proc.pid, args.rest) if i == 0 and args.rest > 0 else None
                    code, down = launch.stop()
                    starts.append({"online": online, "ready": ready, "rss_online": rss_online[0],
                                   "rss_ready": rss_ready[0], "rss_1s": rss_settled[0], "exit": code, "shutdown": down,
                                   "rest_cpu": rest})
                    continue
                t_work = time.monotonic()
                fit_peak = FitPeak(launch.proc.pid)
                reads = await _bas_reads(peer, address, 5000, 50)
                left = args.work - (time.monotonic() - t_work)
                if left > 0:
                    await asyncio.sleep(left)
                # the hour's last fit may still be running: let it finish, then one more cycle
                await C.wait_until(lambda: not http_status(http_port).get("forecaster", {}).get("fitting", True), 60, 0.5)
                await asyncio.sleep(max(1.0, args.work / 60))
                status = http_status(http_port)
                rss_end = C.rss_mb(launch.proc.pid)
                fit_mb = fit_peak.stop()
                fits = sum(1 for _, line in launch.lines if "forecaster fitted on" in line)
                meter_reads = sum(1 for _, line in launch.lines if "meter read" in line)
                code, down = launch.stop()
                tel = status.get("vtn", {}).get("telemetry", {})
                fc = status.get("forecaster", {})
                memory = {"online": online, "ready": ready, "rss_online": rss_online[0],
                          "rss_ready": rss_ready[0], "rss_end": rss_end[0],
                          "hwm": rss_end[1], "fit_hwm": fit_mb, "fit_processes": len(fit_peak.seen), "fits": fits, "bas_reads": reads, "elapsed": time.monotonic() - t_work,
                          "telemetry_delivered": tel.get("delivered"), "telemetry_pending": tel.get("pending"),
                          "history_minutes": fc.get("history_minutes"), "model": fc.get("model"),
                          "exit": code, "shutdown": down, "meter_log_lines": meter_reads,
                          "errors": [line for _, line in launch.lines if " ERROR " in line or "Traceback" in line][:5]}
            finally:
                if launch.proc.poll() is None:
                    launch.stop()
    return starts, memory


async def _cpu_at_rest(pid: int, seconds: float) -> float:
    """CPU ms a second the gateway uses at the production cadence with no BAS reading it (the meter read every
    10 s, telemetry, the forecast cycle each minute): what it costs a small box to keep it running."""
    before, t0 = C.cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (C.cpu_seconds(pid) - before) * 1000 / (time.monotonic() - t0)


async def _bas_reads(peer, address: str, n: int, concurrency: int) -> int:
    from bacnet_api.peer import PeerError

    ok = 0
    todo = iter(range(n))

    async def worker():
        nonlocal ok
        for _ in todo:
            if not isinstance(await peer.read(address, C.METER_OBJECT, "presentValue"), PeerError):
                ok += 1
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=3, help="cold/warm start-up launches to time")
    ap.add_argument("--work", type=float, default=60.0, help="seconds in which an hour of cycles runs")
    ap.add_argument("--rest", type=float, default=60.0,
                    help="seconds the first launch is left at rest (CPU measured; the forecast cycle is 60 s)")
    ap.add_argument("--python-flags", default="", help='interpreter flags for the gateway, e.g. "-OO"')
    args = ap.parse_args()
    C.quiet_logging()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        ports = {"meter_port": C.free_port(), "vtn_port": C.free_tcp_port()}
        peers = C.Peers(ports["meter_port"], ports["vtn_port"], vtn_poll_seconds=2.0).start()
        try:
            starts, memory = asyncio.run(bench(args, Path(tmp), ports))
        finally:
            peers.stop()
    print()
    print(f"start-up of `python {args.python_flags + ' ' if args.python_flags else ''}-m ven.cli run` (seconds from launch); load average {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rows = [[i + 1, s["online"] or float("nan"), s["ready"] or float("nan"), s["rss_online"], s["rss_ready"],
             s["rss_1s"],
             s["exit"], s["shutdown"], "yes" if s["online"] and s["online"] <= 3 else "NO"]
            for i, s in enumerate(starts)]
    m = memory
    rows.append(["work run", m["online"] or float("nan"), m["ready"] or float("nan"), m["rss_online"],
                 m["rss_ready"], "-",
                 m["exit"], m["shutdown"], "yes" if m["online"] and m["online"] <= 3 else "NO"])
    print(C.table(["launch", "online (I-Am) s", "ready s", "RSS online MB", "RSS ready MB", "RSS +1 s MB",
                   "exit", "stop s",
                   "online <= 3 s"], rows))
    print()
    if starts and starts[0]["rest_cpu"] is not None:
        print(f"at rest after the first launch ({args.rest:g} s at the production cadence, no BAS reading): "
              f"{starts[0]['rest_cpu']:.2f} ms of CPU a second ({starts[0]['rest_cpu'] / 10:.2f} % of a core)")
    print()
    print(f"an hour of work in {m['elapsed']:.0f} s (meter every {args.work / 360:.3f} s, forecast every "
          f"{args.work / 60:g} s, retrain every {args.work / 120:g} min, {m['bas_reads']} BAS reads)")
    print(C.table(["RSS ready MB", "RSS after MB", "peak (VmHWM) MB", "fit process peak MB", "fits",
                   "history min", "model", "telemetry delivered", "pending", "RSS <= 200 MB"],
                  [[m["rss_ready"], m["rss_end"], m["hwm"], m["fit_hwm"], f"{m['fits']} ({m['fit_processes']} seen)",
                    m["history_minutes"], m["model"], m["telemetry_delivered"], m["telemetry_pending"],
                    "yes" if m["hwm"] <= 200 else "NO"]]))
    print(f"gateway peak + fit process peak: {m['hwm'] + m['fit_hwm']:.0f} MB (an upper bound of the two together)")
    if m["errors"]:
        print("\nerrors in the gateway's log:")
        for line in m["errors"]:
            print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

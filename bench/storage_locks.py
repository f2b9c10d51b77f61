"""storage.path under other processes: does the file stay whole, and keep every row, while others touch it?

Runs the real gateway (`python -m ven.cli run`, a routed meter simulator, no VTN so the telemetry queue only grows)
for `--cycles` start/stop cycles on a tmpfs, while other processes open the same file with the sqlite3 module and
close it again (readers, `mode=ro` readers, a writer that sometimes holds the write lock past the gateway's busy
timeout, an online backup, a passive checkpoint) and the CLI tools that read it run (check-config; forget-forecast
and import-history, which must refuse while it runs). Every `--ro-every`th start is read-only (the gateway's mount
remounted ro: root ignores chmod) and the mount is made writable again while it runs. After each SIGTERM:
PRAGMA integrity_check, and no row gone that was there before (the queue's, the forecaster's minutes, the writer's
committed marks, the counts the readers saw). `--load N` busy loops run beside it. Needs root (mount).

The others open the file through a second mount of the same tmpfs: the gateway's mount can then be made read-only
while they keep it open for writing, as a data volume's second user would.

    python bench/storage_locks.py [--cycles 40] [--seconds 8] [--ro-every 4] [--load 2] [--port-base 41000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("reader", "reader_ro", "writer", "backup", "checkpoint")


# ---- the other processes ---------------------------------------------------------------------------------------

def _other(role: str, path: str, out: str, stop: str) -> None:
    """One other process: open, work, close, reopen, until `stop` exists; what it saw or committed to `out`."""
    rnd = random.Random(os.getpid())
    seen = {"telemetry_queue": 0, "forecast_minute": 0}
    errors: dict[str, int] = {}
    marks = open(out + ".marks", "a") if role == "writer" else None
    n = 0
    while not os.path.exists(stop):
        n += 1
        try:
            if role == "reader_ro":
                db = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=5)
            else:
                db = sqlite3.connect(path, timeout=5, isolation_level=None)
            try:
                if role in ("reader", "reader_ro"):
                    for table in seen:
                        with contextlib.suppress(sqlite3.OperationalError):   # not made yet
                            seen[table] = max(seen[table], db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                elif role == "writer":
                    db.execute("CREATE TABLE IF NOT EXISTS probe_marks (id TEXT PRIMARY KEY)")
                    db.execute("BEGIN IMMEDIATE")
                    mark = f"{os.getpid()}-{n}"
                    db.execute("INSERT INTO probe_marks VALUES (?)", (mark,))
                    # mostly short; sometimes past the gateway's 0.5 s busy timeout (its write fails, "locked")
                    time.sleep(rnd.choice((0.0, 0.01, 0.05, 0.2, 0.7, 1.2)))
                    db.execute("COMMIT")
                    marks.write(mark + "\n")
                    marks.flush()
                elif role == "backup":
                    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as d:
                        with contextlib.closing(sqlite3.connect(os.path.join(d, "b.sqlite"))) as copy:
                            db.backup(copy)
                            ok = copy.execute("PRAGMA integrity_check").fetchone()[0]
                        if ok != "ok":
                            errors["backup not ok: " + ok[:80]] = errors.get("backup not ok: " + ok[:80], 0) + 1
                elif role == "checkpoint":
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                db.close()
        except sqlite3.Error as err:
            key = str(err)[:80]
            errors[key] = errors.get(key, 0) + 1
        time.sleep(rnd.uniform(0.0, {"backup": 2.0, "checkpoint": 3.0}.get(role, 0.3)))
        if n % 10 == 0:
            Path(out).write_text(json.dumps({"seen": seen, "errors": errors, "rounds": n}))
    Path(out).write_text(json.dumps({"seen": seen, "errors": errors, "rounds": n}))


# ---- the probe -------------------------------------------------------------------------------------------------

def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def remount(where: Path, options: str, within: float = 20.0) -> None:
    """`mount -o remount,bind,OPTIONS`; a mount with a file open for writing refuses ro (EBUSY): tried again."""
    deadline = time.monotonic() + within
    while True:
        done = sh("mount", "-o", f"remount,bind,{options}", str(where), check=False)
        if done.returncode == 0:
            return
        if "busy" not in done.stderr.lower() or time.monotonic() > deadline:
            raise RuntimeError(f"remount {options} {where}: {done.stderr.strip()}")
        time.sleep(0.05)


def rows(path: Path) -> dict[str, set] | str:
    """The rows to keep, by table, read from the file (after a stop), or why it could not be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)) as db:
            check = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
            if check != ["ok"]:
                return "integrity_check: " + "; ".join(check[:3])
            out = {}
            for table, key in (("telemetry_queue", "ts"), ("forecast_minute", "minute"), ("probe_marks", "id"),
                               ("adr_events", "event_id")):
                try:
                    out[table] = {r[0] for r in db.execute(f"SELECT {key} FROM {table}")}
                except sqlite3.OperationalError:
                    out[table] = set()
            return out
    except sqlite3.Error as err:
        return f"{type(err).__name__}: {err}"


def write_config(path: Path, storage: Path, ports: dict[str, int]) -> None:
    path.write_text(f"""
log_level = "INFO"
[bacnet]
address = "127.0.0.1/8:{ports['bacnet']}"
[meter]
address = "12345:2"
object = "analogInput 2"
router = "127.0.0.1:{ports['meter']}"
poll_seconds = 0.5
timeout_seconds = 2
[openadr]
vtn_url = "http://127.0.0.1:{ports['vtn']}/OpenADR2/Simple/2.0b"
ven_name = "locks-probe"
retry_max_seconds = 5
[storage]
path = "{storage}"
retry_seconds = 1
[http]
address = "127.0.0.1:{ports['http']}"
[forecaster]
cycle_seconds = 1
""")


def wait_log(log: Path, text: str, proc: subprocess.Popen, timeout: float, start: int = 0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[start:]:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def tools(config: Path, csv: Path) -> list[tuple[list[str], tuple[int, ...], subprocess.Popen]]:
    """The CLI tools that read storage.path, started at once while the gateway runs; `tools_done` waits for them."""
    cli = [sys.executable, "-m", "ven.cli"]
    out = []
    for args, want in ((["check-config", "--config", str(config)], (0, 1)),
                       (["forget-forecast", "--config", str(config), "--yes"], (1,)),
                       (["import-history", "--config", str(config), "--csv", str(csv), "--time-column", "time",
                         "--value-column", "kw"], (1, 2))):
        proc = subprocess.Popen(cli + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        out.append((args, want, proc))
    return out


def tools_done(started, log: Path) -> list[str]:
    """What went other than expected: forget-forecast and import-history refuse while the gateway runs."""
    wrong = []
    for args, want, proc in started:
        try:
            text, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        with open(log, "a") as fh:
            fh.write(f"$ {args[0]} -> {proc.returncode}\n{text[-400:]}\n")
        if proc.returncode not in want or args[0] != "check-config" and "seems to run" not in text:
            wrong.append(f"{args[0]} exit {proc.returncode}")
    return wrong


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds each run lasts once the gateway is up")
    ap.add_argument("--ro-every", type=int, default=4, help="every Nth start is read-only (0: none)")
    ap.add_argument("--load", type=int, default=2, help="busy loops beside it")
    ap.add_argument("--port-base", type=int, default=41000)
    ap.add_argument("--replace-every", type=int, default=0,
                    help="every Nth cycle, while it runs: `mv backup.sqlite gw.sqlite` (a backup taken a second "
                         "before), its -wal and -shm left in place (0: never)")
    ap.add_argument("--no-others", action="store_true",
                    help="no other process on the file (the CLI tools still run): the gateway's own openers alone")
    ap.add_argument("--minutes", type=float, default=None, help="start no cycle after this many minutes")
    ap.add_argument("--keep", default=None, help="keep the work directory here (default: removed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mount)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="storage-locks-", dir=args.keep))
    fs, gw_dir = work / "fs", work / "gw"
    fs.mkdir()
    gw_dir.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(fs))
    sh("mount", "--bind", str(fs), str(gw_dir))
    b = args.port_base
    ports = {"bacnet": b + 1, "meter": b + 2, "vtn": b + 3, "http": b + 4}
    storage, other = gw_dir / "gw.sqlite", fs / "gw.sqlite"
    config, log = work / "gw.toml", work / "gateway.log"
    write_config(config, storage, ports)
    csv = work / "h.csv"
    csv.write_text("time,kw\n" + "".join(f"{int(time.time()) - 600 * i},{50 + i % 7}\n" for i in range(1, 200)))
    started: list[subprocess.Popen] = []
    stop_file = work / "stop-others"
    results = []
    began = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))   # cleans up as Ctrl-C does
    try:
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
        started += load
        meter = subprocess.Popen([sys.executable, "-m", "ven.cli", "simulate-meter", "--address",
                                  f"127.0.0.1/8:{ports['meter']}", "--value", "42.5"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(meter)
        others = []
        for i, role in enumerate(() if args.no_others else ROLES + ("reader",)):
            out = str(work / f"other-{i}-{role}.json")
            others.append((role, out, subprocess.Popen([sys.executable, __file__, "--other", role, str(other), out,
                                                        str(stop_file)], cwd=ROOT)))
        started += [p for _, _, p in others]
        before: dict[str, set] = {}
        for cycle in range(1, args.cycles + 1):
            if args.minutes is not None and time.monotonic() - began > args.minutes * 60:
                print(f"--minutes {args.minutes:g} reached after {cycle - 1} cycles")
                break
            read_only = bool(args.ro_every) and cycle % args.ro_every == 0
            if read_only:
                remount(gw_dir, "ro")
            mark = len(log.read_text(errors="replace")) if log.exists() else 0
            with open(log, "a") as fh:
                fh.write(f"\n==== cycle {cycle}{' read-only' if read_only else ''}\n")
                fh.flush()
                gw = subprocess.Popen([sys.executable, "-m", "ven.cli", "run", "--config", str(config)], cwd=ROOT,
                                      stdout=fh, stderr=subprocess.STDOUT)
            started.append(gw)
            note = []
            up = wait_log(log, "forecaster resumed", gw, 120, mark)
            if not up:
                note.append("no start")
            # only beside a gateway that runs: forget-forecast --yes and import-history do their work on a stopped one
            # (a start refused because another process had taken a port of the range meanwhile)
            running = tools(config, csv) if gw.poll() is None else []
            time.sleep(args.seconds / 2)
            if read_only:
                remount(gw_dir, "rw")
                if not wait_log(log, "takes writes again", gw, 30, mark):
                    note.append("no 'takes writes again'")
            replaced = bool(args.replace_every) and cycle % args.replace_every == 0 and gw.poll() is None
            if replaced:
                backup = fs / "backup.sqlite"
                for leftover in fs.glob("backup.sqlite*"):     # a cycle that failed before its mv
                    leftover.unlink()
                try:
                    with contextlib.closing(sqlite3.connect(other, timeout=10)) as db:
                        db.execute(f"VACUUM INTO '{backup}'")
                except sqlite3.Error as err:    # a file damaged already
                    note.append(f"no backup ({err})")
                    replaced = False
                else:
                    time.sleep(1.0)     # the gateway writes on
                    os.replace(backup, other)
                    note.append("replaced")
            time.sleep(args.seconds / 2)
            note += tools_done(running, work / "tools.log")
            gw.send_signal(signal.SIGTERM)
            try:
                code = gw.wait(60)
            except subprocess.TimeoutExpired:
                gw.kill()
                code = gw.wait(10)
                note.append("stop took > 60 s")
            started.remove(gw)
            # the writer's marks committed so far, read before the file: each must be in it
            marks = set()
            for _, out, _ in others:
                with contextlib.suppress(OSError):
                    marks |= set(Path(out + ".marks").read_text().split())
            got = rows(storage)
            if isinstance(got, str):
                damaged = got
                lost = {}
            else:
                damaged = ""
                if replaced:    # the writer's marks committed after the gateway's copy went to the file it had open
                    got["probe_marks"] |= before.get("probe_marks", set())
                lost = {t: len(before.get(t, set()) - got[t]) for t in got if before.get(t, set()) - got[t]}
                # what a reader saw (counts) must be there: nothing is deleted here (no VTN takes the queue)
                for role, out, _ in others:
                    with contextlib.suppress(OSError, ValueError):
                        for table, n in json.loads(Path(out).read_text())["seen"].items():
                            if n > len(got.get(table, ())):
                                lost[f"{table} seen by {role}"] = n - len(got[table])
                if marks - got["probe_marks"] and not replaced:
                    lost["probe_marks committed"] = len(marks - got["probe_marks"])
                before = got
            results.append((cycle, read_only, code, damaged, lost, note))
            print(f"cycle {cycle:3d}{' ro' if read_only else '   '} exit {code} "
                  f"{'DAMAGED ' + damaged if damaged else 'ok'}{' lost ' + str(lost) if lost else ''}"
                  f"{' ' + '; '.join(note) if note else ''}"
                  + ("" if damaged else f"  rows: {', '.join(f'{t} {len(v)}' for t, v in got.items())}"), flush=True)
            if damaged:
                # a damaged file stays damaged: the next start sets it aside; start over from it as the site would
                before = {}
    finally:
        stop_file.touch()
        for p in started:
            if p.poll() is None and p in [o[2] for o in locals().get("others", [])]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p not in locals().get("load", []) else signal.SIGKILL)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for _, out, _ in locals().get("others", []):
            with contextlib.suppress(OSError, ValueError):
                print(Path(out).name, Path(out).read_text())
        text = log.read_text(errors="replace") if log.exists() else ""
        print("gateway log: tracebacks", text.count("Traceback"), "| ERROR lines", text.count(" ERROR "),
              "| 'damaged' lines", text.count("is damaged"), "| 'deleted while' lines", text.count("was deleted"))
        sh("umount", str(gw_dir), check=False)
        if args.keep:
            subprocess.run(["cp", "-a", str(fs), str(work / "fs-copy")], check=False)
        sh("umount", str(fs), check=False)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print("work directory:", work)
    damaged = sum(1 for r in results if r[3])
    lost = sum(1 for r in results if r[4])
    print(f"{len(results)} cycles ({sum(1 for r in results if r[1])} read-only starts): {damaged} damaged, "
          f"{lost} with rows lost, {sum(1 for r in results if r[2] != 0)} non-zero exits; "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--other":
        _other(*sys.argv[2:])
    else:
        sys.exit(main())

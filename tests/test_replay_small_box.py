"""forecast-replay on a box, or in a container, given fewer CPUs than the machine has: one fit process per
CPU it may use, not per CPU the machine has (each costs about 150 MB and they only share the one core)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = 1767225600  # 2026-01-01T00:00Z, a cycle boundary

needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="needs a process allowed on two CPUs")


def _replay(tmp_path: Path, preexec) -> str:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("timestamp,kw\n" + "".join(f"{START + 900 * i},{100 + i % 7}\n" for i in range(10)))
    done = subprocess.run([sys.executable, "-m", "ven.cli", "forecast-replay", "--csv", str(src), "--time-column",
                           "timestamp", "--value-column", "kw", "--output", str(out)],
                          cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=preexec,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_two_cpus
@pytest.mark.timeout(150)
def test_replay_pinned_to_one_cpu_fits_in_one_process(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    assert "fit_processes=2" in _replay(tmp_path, None)     # two horizons, two CPUs: side by side
    assert "fit_processes=1" in _replay(tmp_path, lambda: os.sched_setaffinity(0, {cpu}))   # taskset -c 0


def _cpu_cgroup(quota_us: int, period_us: int) -> tuple[Path, str]:
    """A cgroup allowing quota/period CPUs (v1's cpu controller or v2's cpu.max); skips where none can be made."""
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    name = f"edge-gateway-test-{uuid.uuid4().hex[:8]}"
    v1 = next((Path("/sys/fs/cgroup", d) for d in ("cpu", "cpu,cpuacct")
               if Path("/sys/fs/cgroup", d, "cpu.cfs_quota_us").exists()), None)
    v2 = Path("/sys/fs/cgroup")
    group = None
    try:
        if v1 is not None:
            group = v1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")
        else:
            pytest.skip("no cgroup cpu controller to limit a process with")
    except OSError as err:
        if group is not None and group.exists():
            group.rmdir()
        pytest.skip(f"cannot make a cpu cgroup here: {err}")
    return group, str(group / "cgroup.procs")


@needs_two_cpus
@pytest.mark.timeout(150)
def test_replay_under_a_cpu_quota_of_one_cpu_fits_in_one_process(tmp_path):
    """docker run --cpus 1, systemd CPUQuota=100%: both CPUs visible, one CPU's worth of time."""
    group, procs = _cpu_cgroup(100_000, 100_000)

    def join():
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    try:
        assert "fit_processes=1" in _replay(tmp_path, join)
    finally:
        group.rmdir()   # its only process has exited

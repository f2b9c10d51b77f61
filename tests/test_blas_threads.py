"""The gateway's own BLAS starts no thread of its own: it cannot use one, and a box given one CPU pays for it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from ven.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
import numpy
from threadpoolctl import threadpool_info
print([i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"])
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts one thread on one CPU anyway")
def test_the_command_line_holds_openblas_to_one_thread_before_numpy_is_imported(tmp_path):
    # Under systemd CPUQuota=100% OpenBLAS counted the cores, not the quota, and started a thread per core, each
    # spinning about 90 ms of CPU from the box's one-CPU quota at every start
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", PROBE, "--version"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[1]", out.stdout


@pytest.mark.timeout(60)
def test_an_operators_own_openblas_setting_is_kept(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", PROBE, "--version"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[2]", out.stdout

"""The test command's scheduling (tests/conftest.py): under -n, a module whose tests share a module-scoped fixture
goes to one worker whole, so the fixture (a Chromium, a built wheel, a fit) is set up once, not on every worker."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SHARED = '''
import os
import pytest

@pytest.fixture(scope="module")
def shared():
    with open(os.environ["SETUPS"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("i", range(8))
def test_uses_it(shared, i):
    pass
'''


def test_a_module_sharing_a_module_scoped_fixture_sets_it_up_once_under_xdist(tmp_path):
    # each worker parses the command line again: it took the run for "load" when the scheduling moved from addopts
    # to conftest, no group was named, and the dashboard modules' Chromium started on every worker
    for name in ("conftest.py", "timeouts.py"):     # the suite's conftest and the plugin it registers
        shutil.copy(Path(__file__).with_name(name), tmp_path / name)
    (tmp_path / "test_shared.py").write_text(SHARED)
    setups = tmp_path / "setups.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(SETUPS=str(setups), HOME=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "test_shared.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "8 passed" in run.stdout, run.stdout
    assert len(setups.read_text().split()) == 1, (setups.read_text(), run.stdout)

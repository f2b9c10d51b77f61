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


def _env_without_pytest() -> dict:
    """The environment for a pytest run of its own: without this run's PYTEST_ variables (xdist's worker name)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def _copy_conftest(to: Path) -> None:
    for name in ("conftest.py", "timeouts.py", "run_order.py"):     # the suite's conftest and what it imports
        shutil.copy(Path(__file__).with_name(name), to / name)


def test_a_module_sharing_a_module_scoped_fixture_sets_it_up_once_under_xdist(tmp_path):
    # each worker parses the command line again: it took the run for "load" when the scheduling moved from addopts
    # to conftest, no group was named, and the dashboard modules' Chromium started on every worker
    _copy_conftest(tmp_path)
    (tmp_path / "test_shared.py").write_text(SHARED)
    setups = tmp_path / "setups.txt"
    env = _env_without_pytest()
    env.update(SETUPS=str(setups), HOME=str(tmp_path))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "test_shared.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "8 passed" in run.stdout, run.stdout
    assert len(setups.read_text().split()) == 1, (setups.read_text(), run.stdout)


def test_the_collected_order_spreads_waiting_tests_and_shared_modules_by_their_recorded_seconds(tmp_path):
    _copy_conftest(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 120\nmarkers =\n    mostly_waiting: waits\n")
    (tmp_path / "test_waits.py").write_text(
        "import pytest\npytestmark = pytest.mark.mostly_waiting\n"
        + "".join(f"def test_w{i}():\n    pass\n" for i in range(5)))
    (tmp_path / "test_quick.py").write_text("".join(f"def test_q{i}():\n    pass\n" for i in range(100)))
    (tmp_path / "test_long.py").write_text("import pytest\n@pytest.mark.timeout(600)\ndef test_l():\n    pass\n")
    (tmp_path / "test_shared.py").write_text(SHARED)
    # 50 s of waiting in 5 tests, 50 s of quick tests in 100, a shared module of 8 tests in 8 s
    (tmp_path / "durations.tsv").write_text("test_waits.py\t5\t50\ntest_quick.py\t100\t50\n"
                                            "test_shared.py\t8\t8\n")
    env = _env_without_pytest()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    order = [line.split("::")[0] for line in run.stdout.splitlines() if "::" in line]
    assert len(order) == 114 and order[0] == "test_long.py", order
    # seconds dealt before each test, from the table (a file it lacks: the median file's test, 1 s here)
    per_test = {"test_waits.py": 10.0, "test_quick.py": 0.5, "test_shared.py": 1.0, "test_long.py": 1.0}
    starts = [sum(per_test[name] for name in order[:i]) for i in range(len(order))]
    waits = [starts[i] for i, name in enumerate(order) if name == "test_waits.py"]
    # 109 s in all: the waiting tests due every 0.9 * 109 / 5 s, each dealt no later than the unit then running ends
    due = [k * 0.9 * 109 / 5 for k in range(5)]
    assert all(d <= w < d + 10.5 for d, w in zip(due, waits)), (waits, order)
    assert order[-10:] == ["test_quick.py"] * 10, order
    shared = [i for i, name in enumerate(order) if name == "test_shared.py"]
    assert shared == list(range(shared[0], shared[0] + 8)), order


def test_a_run_whose_table_lacks_a_test_file_says_so_in_one_line(tmp_path):
    (tmp_path / "tests").mkdir()
    _copy_conftest(tmp_path / "tests")
    (tmp_path / "tests" / "test_listed.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "tests" / "test_new.py").write_text("def test_b():\n    pass\n")
    env = _env_without_pytest()
    said = "tests/durations.tsv lacks 1 test file(s) (tests/test_new.py)"
    for table, says in (("tests/test_listed.py\t1\t0.1\n", True),
                        ("tests/test_listed.py\t1\t0.1\ntests/test_new.py\t1\t0.1\n", False)):
        (tmp_path / "tests" / "durations.tsv").write_text(table)
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "tests"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert (said in run.stdout) is says and run.stdout.count("durations.tsv lacks") == says, run.stdout

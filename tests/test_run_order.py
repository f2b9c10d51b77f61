"""The order the test command deals tests in: merged by recorded seconds, the table read from pytest's own junit XML."""
from __future__ import annotations

import subprocess
import sys

import pytest

import run_order
from run_order import Queue, merge


def _seconds(unit):
    return sum(unit)


def test_each_queue_takes_its_share_of_every_stretch_by_seconds_not_by_count():
    waits = Queue([[10.0]] * 10, done_at=1.0)     # 100 s in ten tests
    quick = Queue([[0.1]] * 1000)                 # 100 s in a thousand, filling between them
    order = merge([waits, quick], _seconds)
    assert len(order) == 1010
    taken = {10.0: 0.0, 0.1: 0.0}
    for unit in order:
        taken[unit[0]] += unit[0]
        # never more than one long unit ahead of or behind the quick ones' seconds
        assert abs(taken[10.0] - taken[0.1]) <= 10.0 + 1e-6


def test_a_queue_done_early_starts_its_last_unit_by_that_share_of_all_the_seconds():
    waits = Queue([[5.0]] * 20, done_at=0.9)
    rest = Queue([[1.0]] * 200)
    order = merge([waits, rest], _seconds)
    last = max(i for i, unit in enumerate(order) if unit == [5.0])
    before = sum(unit[0] for unit in order[:last])
    assert 0.85 * 300 <= before <= 0.9 * 300
    assert order[-1] == [1.0]


def test_units_stay_whole_and_in_their_queues_order():
    a = Queue([["a1", "a2"], ["a3"]], done_at=0.5)
    b = Queue([["b1"], ["b2"], ["b3"]])
    c = Queue([["c1"]], done_at=1.0)
    order = merge([a, b, c], len)
    assert sorted(order) == sorted(a.units + b.units + c.units)
    assert [u for u in order if u[0][0] == "a"] == a.units
    assert [u for u in order if u[0][0] == "b"] == b.units
    assert order[0] == ["a1", "a2"]     # a due queue goes before the one that fills


def test_the_table_comes_from_a_runs_junit_xml_and_a_file_it_lacks_gets_the_median(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_one.py").write_text("import time\ndef test_a():\n    time.sleep(0.2)\n"
                                                    "def test_b():\n    pass\n")
    (tmp_path / "tests" / "test_two.py").write_text("class TestC:\n    def test_c(self):\n        pass\n")
    xml = tmp_path / "run.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                    f"--junitxml={xml}", "-o", "junit_duration_report=total", "tests"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    table = run_order.table_from_junit(xml, tmp_path)
    assert set(table) == {"tests/test_one.py", "tests/test_two.py"}
    assert table["tests/test_one.py"][0] == 2 and table["tests/test_two.py"][0] == 1
    assert table["tests/test_one.py"][1] >= 0.2
    assert table["tests/test_two.py"][1] < 0.2

    tsv = tmp_path / "durations.tsv"
    tsv.write_text("# file\ttests\tseconds\n" + "".join(f"{f}\t{n}\t{s}\n" for f, (n, s) in table.items()))
    per_test = run_order.estimator(run_order.read_table(tsv))
    assert per_test("tests/test_one.py::test_a") == table["tests/test_one.py"][1] / 2
    unknown = per_test("tests/test_three.py::test_d")
    assert min(s / n for n, s in table.values()) <= unknown <= max(s / n for n, s in table.values())


def test_a_missing_table_spreads_by_count(tmp_path):
    per_test = run_order.estimator(run_order.read_table(tmp_path / "none.tsv"))
    assert per_test("tests/test_x.py::test_y") == 1.0


def test_a_damaged_table_names_its_line(tmp_path):
    tsv = tmp_path / "durations.tsv"
    tsv.write_text("# file\ttests\tseconds\ntests/test_a.py\t2\t3.0\ntests/test_b.py 4 5.0\n")
    with pytest.raises(ValueError, match=r"durations.tsv:3: not file<TAB>tests<TAB>seconds: 'tests/test_b.py 4 5.0'"):
        run_order.read_table(tsv)

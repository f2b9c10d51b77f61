"""The order the test command hands tests to its workers, by how long each file's tests took in a recorded run.

`durations.tsv` beside this file holds, per test file, how many tests it had and their seconds (setup, call and
teardown) in a full run of the test command. Refresh it after tests were added or changed much:

    python -m pytest -q -n 8 --junitxml=/tmp/run.xml -o junit_duration_report=total
    python tests/run_order.py /tmp/run.xml

A file it does not name counts each of its tests as the median file's test; nothing fails on a stale table, the
run is only less evenly spread.
"""
from __future__ import annotations

import statistics
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

TABLE = Path(__file__).with_name("durations.tsv")


@dataclass
class Queue:
    """Units (lists of tests dealt together) to merge. With done_at, its units start evenly over the first done_at
    of the run's seconds; without, it fills between them."""
    units: list[list] = field(default_factory=list)
    done_at: float | None = None


def read_table(path: Path = TABLE) -> dict[str, float]:
    """Seconds per test, by file (the nodeid's part before "::")."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    per_test = {}
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#"):
            try:
                name, tests, seconds = line.split("\t")
                per_test[name] = float(seconds) / max(int(tests), 1)
            except ValueError:
                raise ValueError(f"{path}:{number}: not file<TAB>tests<TAB>seconds: {line!r}") from None
    return per_test


def files_missing(per_test: dict[str, float], root: Path) -> list[str]:
    """The test files under root/tests that the table does not name."""
    return sorted(name for path in (root / "tests").glob("test_*.py")
                  if (name := path.relative_to(root).as_posix()) not in per_test)


def estimator(per_test: dict[str, float]):
    """A function giving a test's expected seconds from its nodeid."""
    fallback = statistics.median(per_test.values()) if per_test else 1.0
    return lambda nodeid: per_test.get(nodeid.split("::")[0], fallback)


def merge(queues: list[Queue], seconds) -> list[list]:
    """The units of all queues in one list, each queue with a done_at spread over it by expected seconds.

    xdist deals the list to whichever worker is free, so a stretch of the list is a stretch of the run: each such
    queue takes its share of every stretch, measured in seconds, not in tests (a spread by count put the files that
    wait on report intervals beside configuration tests of a tenth of a second each, and all six workers waited at
    once for two minutes). A unit is due where the seconds before it in its queue put it on a line from 0 to the
    queue's done_at of all the seconds; the first queue that is due goes next, else the first that fills."""
    total = sum(seconds(u) for q in queues for u in q.units)
    own = [sum(seconds(u) for u in q.units) or 1.0 for q in queues]
    taken = [0.0] * len(queues)
    nexts = [0] * len(queues)
    dealt, out = 0.0, []
    while True:
        left = [i for i, q in enumerate(queues) if nexts[i] < len(q.units)]
        if not left:
            return out
        due = {i: taken[i] / own[i] * queues[i].done_at * total for i in left if queues[i].done_at is not None}
        fillers = [i for i in left if queues[i].done_at is None]
        soonest = min(due, key=due.get, default=None)
        pick = soonest if soonest is not None and (due[soonest] <= dealt or not fillers) else fillers[0]
        unit = queues[pick].units[nexts[pick]]
        out.append(unit)
        taken[pick] += seconds(unit)
        dealt += seconds(unit)
        nexts[pick] += 1


def table_from_junit(xml_path: Path, root: Path) -> dict[str, tuple[int, float]]:
    """Tests and seconds per file from pytest's --junitxml (classname "tests.test_x" or "tests.test_x.TestY")."""
    files: dict[str, list] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        name = next(("/".join(parts[:k]) + ".py" for k in range(len(parts), 0, -1)
                     if (root / ("/".join(parts[:k]) + ".py")).is_file()), None)
        if name is None:
            continue
        entry = files.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += float(case.get("time", 0))
    return {name: (n, s) for name, (n, s) in sorted(files.items())}


def main(argv: list[str], table_path: Path = TABLE) -> int:
    if len(argv) != 1:
        print("usage: python tests/run_order.py RUN.xml  (pytest --junitxml=RUN.xml -o junit_duration_report=total)",
              file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parent.parent
    table = table_from_junit(Path(argv[0]), root)
    if not table:
        print(f"{argv[0]}: no test cases of files under {root}", file=sys.stderr)
        return 1
    rows = [f"{name}\t{n}\t{s:.1f}" for name, (n, s) in table.items()]
    table_path.write_text("# file\ttests\tseconds (setup + call + teardown, summed, in a full run at -n 8)\n"
                          + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"{table_path}: {len(rows)} files, {sum(n for n, _ in table.values())} tests, "
          f"{sum(s for _, s in table.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""forecast-replay --events: a building's history replayed with the demand-response events it shed for, kept
out of learning as the gateway keeps the events it ran (tests/test_forecast_curtailed.py)."""
from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest
from test_forecast_curtailed import DAY, T0, peaky_office, shed

from ven.cli import main

pytestmark = pytest.mark.timeout(240)
EVENT_DAYS = (21, 22, 23, 24, 25)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()


def write_building(tmp_path):
    t = T0 + np.arange(0, 29 * DAY, 900.0)
    v = shed(t, peaky_office(t), EVENT_DAYS)
    with open(tmp_path / "meter.csv", "w") as fh:
        fh.write("timestamp,kw\n")
        fh.writelines(f"{iso(ti)},{vi:.1f}\n" for ti, vi in zip(t, v))
    with open(tmp_path / "events.csv", "w") as fh:
        fh.write("# the utility's event log\nevent;start;end\n")
        fh.writelines(f"e{d};{iso(T0 + d * DAY + 12 * 3600)};{iso(T0 + d * DAY + 16 * 3600)}\n" for d in EVENT_DAYS)


def replay(tmp_path, *extra) -> int:
    return main(["forecast-replay", "--csv", str(tmp_path / "meter.csv"), "--time-column", "timestamp",
                 "--value-column", "kw", "--output", str(tmp_path / "out.csv"), "--cycle-minutes", "60",
                 # fitted at 48 h and then at the Monday's midnight, on the four weeks before it
                 "--retrain-minutes", str(26 * 1440), "--fit-processes", "1", *extra])


def monday_peak(tmp_path) -> float:
    issued = iso(T0 + 28 * DAY + 12 * 3600)
    with open(tmp_path / "out.csv", newline="") as fh:
        row, = [r for r in csv.DictReader(fh) if r["issued_at"] == issued and r["horizon_minutes"] == "60"]
    return float(row["forecast_kw"])


def test_replay_with_the_event_log_forecasts_the_peak_the_week_of_sheds_hid(tmp_path, capsys):
    # Told nothing, the forecaster expects the shed's 280 kW for that peak: test_forecast_curtailed's first test fits
    # the same weeks both ways (a replay here without --events, 9 s of CPU, showed the same, under 350 kW)
    write_building(tmp_path)
    assert replay(tmp_path, "--events", str(tmp_path / "events.csv")) == 0
    told = monday_peak(tmp_path)
    assert "events=5" in capsys.readouterr().out
    assert abs(told - 400) < 25, told


@pytest.mark.parametrize("content, says", [
    ("from,to\n2024-03-25T12:00Z,2024-03-25T16:00Z\n", "line 1: the header must name the columns start and end"),
    ("start,end\n2024-03-25T12:00Z,25/03/2024 16:00\n", "line 2: a time is not ISO 8601 or epoch seconds"),
    ("start,end\n2024-03-25T12:00Z,2024-03-25T16:00Z\n2024-03-26T16:00Z,2024-03-26T12:00Z\n",
     "line 3: the end must not come before the start"),
    ("start,end\n2024-03-25T12:00Z\n", "line 2: no start or no end"),
    ("start,end\n2024-03-25T12:00Z,\n", "line 2: no start or no end"),
])
def test_an_event_log_that_cannot_be_read_is_refused_naming_the_line_and_nothing_is_written(
        tmp_path, capsys, content, says):
    write_building(tmp_path)
    (tmp_path / "events.csv").write_text(content)
    assert replay(tmp_path, "--events", str(tmp_path / "events.csv")) == 1
    err = capsys.readouterr().err
    assert says in err and err.startswith("forecast-replay: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.csv").exists()

"""/api/history.csv: /api/history's minutes as CSV rows (the same values, minute by minute), under the same
token and hours rules, encoded off the event loop, and read back by forecast-replay with no options."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading

import pytest

from cli_run import run_cli
from test_http_api import SampleView, fetch, served  # noqa: F401  (served: the fixture)
from ven.history import build_history

pytestmark = pytest.mark.timeout(90)

UTC = dt.timezone.utc
HEADER = ["minute", "power_kw", "demand_kw", "forecast_15_kw", "forecast_60_kw", "high_load", "low_load",
          "event_level", "opted_out"]


def _rows(text):
    return list(csv.reader(io.StringIO(text, newline="")))


def _kw(cell):
    return None if cell == "" else float(cell)


def _flag(cell):
    return None if cell == "" else {"0": False, "1": True}[cell]


async def test_the_csv_holds_the_json_history_minute_by_minute(served):  # noqa: F811
    server, view, base = await served()
    _, _, body = await fetch(base + "/api/history?hours=24")
    history = json.loads(body)
    status, headers, text = await fetch(base + "/api/history.csv?hours=24")
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    first = dt.datetime.fromtimestamp(history["minutes"][0], UTC).strftime("%Y%m%dT%H%MZ")
    assert headers["Content-Disposition"] == f'attachment; filename="edge-gateway-history-{first}-24h.csv"'
    assert headers["Cache-Control"] == "no-store"
    assert "None" not in text and "nan" not in text.lower()
    header, *rows = _rows(text)
    assert header == HEADER and len(rows) == len(history["minutes"]) == 1440
    for i, row in enumerate(rows):
        cells = dict(zip(header, row))
        assert cells["minute"] == dt.datetime.fromtimestamp(history["minutes"][i], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for column, key in (("power_kw", "power_kw"), ("demand_kw", "demand_kw"), ("forecast_15_kw", "forecast_15"),
                            ("forecast_60_kw", "forecast_60")):
            assert _kw(cells[column]) == history[key][i], (i, column)
        for key in ("high_load", "low_load"):
            assert _flag(cells[key]) == history[key][i], (i, key)
    assert sum(row[1] == "" for row in rows) == 20  # the meter outage: empty cells, not 0 or "None"
    # SampleView's completed level-2 event (2 h) and the active level-1 one (its 31 minutes up to now)
    levels = [int(row[7]) for row in rows]
    assert (levels.count(2), levels.count(1)) == (120, 31)
    assert levels[-31:] == [1] * 31 and levels[-6 * 60 - 1:-4 * 60 - 1] == [2] * 120  # the last minute is now's
    assert {row[8] for row in rows} == {"0"}
    # a shorter span: the hours and the first minute in the file name
    status, headers, text = await fetch(base + "/api/history.csv?hours=2")
    assert len(_rows(text)) == 121 and headers["Content-Disposition"].endswith('-2h.csv"')


def test_each_minute_carries_the_level_in_force_and_whether_it_was_opted_out():
    now = 1_795_312_230.0  # 2026-11-22 01:50:30 UTC: minutes 00:51 to 01:50
    answers = [{"at": "2026-11-22T00:40:00Z", "opt": "optIn"}, {"at": "2026-11-22T01:10:00Z", "opt": "optOut"},
               {"at": "2026-11-22T01:20:00Z", "opt": "optIn"}]

    def event(event_id, start, seconds, level, opt="optIn", changes=None):
        return {"event_id": event_id, "status": "active", "opt": opt, "opt_changes": changes,
                "signals": [{"name": "SIMPLE", "type": "level",
                             "intervals": [{"start": start, "duration_seconds": seconds, "payload": level}]}]}
    events = [event("hour", "2026-11-22T01:00:00Z", 3600, 2.0, changes=answers),
              event("spike", "2026-11-22T01:30:00Z", 300, 3.0, opt="optOut"),         # over "hour", opted out
              event("late", "2026-11-22T00:55:30Z", 270, 1.0)]                       # starts inside a minute
    body = build_history(now, 1.0, {"power": {"time": [], "kw": []}}, events, horizons=(30, 120))
    from ven.history_csv import history_csv
    header, *rows = _rows(history_csv(body))
    assert header[3:5] == ["forecast_30_kw", "forecast_120_kw"]  # the configured horizons
    got = [(row[0][11:16], int(row[7]), int(row[8])) for row in rows]
    expected = ([(f"00:{m}", 0, 0) for m in range(51, 55)] + [(f"00:{m}", 1, 0) for m in range(55, 60)]
                + [(f"01:{m:02d}", 2, 0) for m in range(0, 10)] + [(f"01:{m}", 2, 1) for m in range(10, 20)]
                + [(f"01:{m}", 2, 0) for m in range(20, 30)] + [(f"01:{m}", 3, 1) for m in range(30, 35)]
                + [(f"01:{m}", 2, 0) for m in range(35, 51)])
    assert got == expected
    assert {row[1] for row in rows} == {""} and {row[5] for row in rows} == {""}  # nothing known: empty, not 0


async def test_the_csv_asks_for_the_token_as_the_json_does(served):  # noqa: F811
    server, view, base = await served(token="s3cret")
    path = base + "/api/history.csv?hours=1"
    status, headers, _ = await fetch(path)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert (await fetch(path, {"Authorization": "Bearer wrong"}))[0] == 401
    status, headers, text = await fetch(path, {"Authorization": "Bearer s3cret"})
    assert status == 200 and _rows(text)[0] == HEADER
    # without a token, only requests made to loopback (a rebound name of another site is refused)
    server, view, base = await served()
    assert (await fetch(base + "/api/history.csv", {"Host": "evil.example:8000"}))[0] == 403
    assert (await fetch(base + "/api/history.csv"))[0] == 200


async def test_the_csv_refuses_the_hours_the_json_refuses(served):  # noqa: F811
    server, view, base = await served()
    for bad in ("abc", "0", "-3", "nan", "100000", "841"):
        json_answer = await fetch(base + f"/api/history?hours={bad}")
        status, headers, body = await fetch(base + f"/api/history.csv?hours={bad}")
        assert status == 400 and "hours must be a number" in body, bad
        assert (status, body) == (json_answer[0], json_answer[2]), bad
    assert len(_rows((await fetch(base + "/api/history.csv?hours=840"))[2])) == 1441  # SampleView has a day


async def test_the_csv_is_made_off_the_event_loop(served, monkeypatch):  # noqa: F811
    import ven.http_api

    made_in = []
    real = ven.http_api.history_csv

    def recording(body):
        made_in.append(threading.get_ident())
        return real(body)
    monkeypatch.setattr(ven.http_api, "history_csv", recording)
    server, view, base = await served()
    status, _, text = await fetch(base + "/api/history.csv?hours=24")
    assert status == 200 and len(_rows(text)) == 1441
    assert made_in and threading.get_ident() not in made_in


class ThreeDecimalView(SampleView):
    """Three hours of the gateway's own shaping (build_history) whose every power reads like 96.412:
    a reader that refuses to guess takes such values alone for thousands grouped either way."""

    def history(self, hours):
        now = self.minutes[-1] + 30
        times = [t + 30 for t in self.minutes[-180:]]
        kw = [round(90 + i % 50 + 0.001 * (1 + i % 9), 3) for i in range(len(times))]
        assert all(len(f"{v}".split(".")[1]) == 3 for v in kw)
        return build_history(now, hours, {"power": {"time": times, "kw": kw}})


async def test_forecast_replay_reads_the_csv_as_it_comes(served, tmp_path):  # noqa: F811
    server, view, base = await served(ThreeDecimalView())
    _, _, body = await fetch(base + "/api/history?hours=4")
    history = json.loads(body)
    _, _, text = await fetch(base + "/api/history.csv?hours=4")
    exported = tmp_path / "history.csv"
    exported.write_text(text, encoding="utf-8", newline="")
    out = tmp_path / "predictions.csv"
    done = run_cli(["forecast-replay", "--csv", str(exported), "--time-column", "minute", "--value-column",
                    "power_kw", "--output", str(out)], timeout=60)
    assert done.returncode == 0, done.stderr
    summary = dict(part.split("=", 1) for part in done.stdout.split() if "=" in part)
    known = [(m, kw) for m, kw in zip(history["minutes"], history["power_kw"]) if kw is not None]
    assert len(known) == 180 and summary["samples"] == summary["accepted"] == "180"
    # the hour before the gateway had readings: empty cells, skipped and counted, nothing read as a value
    # one line for them, not one a minute that reads as a damaged file
    assert summary["skipped_rows"] == "60" and "60 row(s) with a time and no value (no reading then) skipped" in \
        done.stderr and "is not a number" not in done.stderr, done.stderr
    assert "--decimal" not in done.stderr
    # the values replayed are the gateway's, time for time
    from zoneinfo import ZoneInfo

    from forecaster.export_csv import read_export
    times, values, *_ = read_export(exported, "minute", "power_kw", ZoneInfo("UTC"))
    assert [(float(t), float(v)) for t, v in zip(times, values)] == [(float(m), kw) for m, kw in known]
    with out.open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) > 0

"""Offline replay on the shipped Turin excerpt (tests/data/README.md) and on an irregular series."""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from forecaster import DemandForecaster
from forecaster.model import MODEL_NAME
from forecaster.replay import OUTPUT_COLUMNS, ReplayInputError, read_series, replay_csv, replay_series

EXCERPT = Path(__file__).parent / "data" / "turin_office_excerpt.csv"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(240)
def test_replay_of_the_turin_excerpt(tmp_path):
    out = tmp_path / "pred.csv"
    summary = replay_csv(EXCERPT, "timestamp", "Total_Power", out, cycle_minutes=15, fit_processes=1,
                         holiday_preset="IT", retrain_minutes=2880)
    src = _rows(EXCERPT)
    rows = _rows(out)
    assert list(rows[0]) == list(OUTPUT_COLUMNS)
    assert summary["cycles"] == len(src) and len(rows) == 2 * len(src)
    assert summary["accepted"] == len(src) and summary["rejected"] == 0
    assert summary["fits"] == 4  # every 2 days once 48 h of history exist
    first = rows[0]
    assert first["issued_at"] == "2019-10-14T00:00:00+00:00" and first["horizon_minutes"] == "15"
    assert first["target_time"] == "2019-10-14T00:15:00+00:00"
    assert float(first["forecast_kw"]) == pytest.approx(float(src[0]["Total_Power"]))
    assert first["model"] == "persistence"
    # once fitted, the learned model serves for most of the last days and beats persistence there
    actual = {r["timestamp"]: float(r["Total_Power"]) for r in src}
    late = [r for r in rows if r["issued_at"] >= "2019-10-20" and r["horizon_minutes"] == "60"]
    assert sum(r["model"] == MODEL_NAME for r in late) > len(late) / 2
    err_model, err_persist = [], []
    for r in late:
        key = r["target_time"][:19].replace("T", " ")
        issued = r["issued_at"][:19].replace("T", " ")
        if key in actual:
            err_model.append(float(r["forecast_kw"]) - actual[key])
            err_persist.append(actual[issued] - actual[key])
    assert np.sqrt(np.mean(np.square(err_model))) < np.sqrt(np.mean(np.square(err_persist)))
    assert {r["high_load"] for r in rows} == {"0", "1"}


@pytest.mark.timeout(240)
def test_batched_replay_with_a_fit_pool_issues_what_cycle_by_cycle_prediction_issues():
    """Replay predicts a day of cycles at once and fits the horizons in two processes; the reference
    here predicts one cycle at a time and fits in this process."""
    from zoneinfo import ZoneInfo

    t, v, _ = read_series(EXCERPT, "timestamp", "Total_Power", ZoneInfo("UTC"))
    params = dict(holiday_preset="IT", retrain_minutes=2880)
    batched = []
    summary = replay_series(t, v, lambda f, h, kw: batched.append((f.issued_at, h, kw, f.high_load, f.low_load,
                                                                   f.model)), 15, fit_processes=2, **params)
    assert summary["fit_processes"] == 2
    fc, one_by_one, i = DemandForecaster(**params), [], 0
    for now in np.arange(t[0], t[-1] + 1, 900.0):
        while i < t.size and t[i] <= now:
            fc.add_sample(t[i], v[i])
            i += 1
        if fc.needs_fit(now):
            fc.fit(now)
        f = fc.predict(now)
        one_by_one += [(f.issued_at, h, kw, f.high_load, f.low_load, f.model) for h, kw in f.demand_kw.items()]
    assert len(batched) == len(one_by_one)
    assert {r[5] for r in batched} >= {"persistence", MODEL_NAME}
    for a, b in zip(batched, one_by_one):
        assert a[:2] == b[:2] and a[3:] == b[3:]
        assert a[2] == pytest.approx(b[2], rel=1e-9, abs=1e-9)


def test_replay_accepts_an_irregular_series_and_skips_bad_rows(tmp_path):
    src = tmp_path / "irregular.csv"
    rng = np.random.default_rng(0)
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp() + np.cumsum(rng.uniform(20, 400, 600))
    with open(src, "w") as fh:
        fh.write("# comment lines are skipped\nwhen,kw\n")
        for i, s in enumerate(t):
            stamp = dt.datetime.fromtimestamp(s, dt.timezone.utc).isoformat()
            fh.write(f"{stamp},{'oops' if i == 5 else 50 + 10 * np.sin(s / 3600)}\n")
        fh.write(f"{dt.datetime.fromtimestamp(t[-1] + 30, dt.timezone.utc).isoformat()},nan\n")
    summary = replay_csv(src, "when", "kw", tmp_path / "out.csv", cycle_minutes=5)
    assert summary["skipped_rows"] == 1 and summary["rejected"] == 1
    rows = _rows(tmp_path / "out.csv")
    assert len(rows) == 2 * summary["cycles"] and all(r["forecast_kw"] for r in rows[2:])


def test_replay_names_a_missing_column(tmp_path):
    with pytest.raises(ReplayInputError, match="no column 'power'.*timestamp, Total_Power, temp"):
        replay_csv(EXCERPT, "timestamp", "power", tmp_path / "out.csv")
    with pytest.raises(ReplayInputError, match="cannot read"):
        replay_csv(tmp_path / "missing.csv", "a", "b", tmp_path / "out.csv")

"""ForecastStore: history and model survive a restart in a real SQLite file; forecasts resume at once."""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from forecaster import DemandForecaster
from forecaster.model import MODEL_NAME
from forecaster.store import ForecastStore

import shared_fit
from test_forecaster import T0, office


def _seeded(days=8):
    fc = DemandForecaster(validation_days=2)
    t = T0 + np.arange(0, days * 86400, 900.0)
    fc.seed(t, office(t) + np.random.default_rng(0).normal(0, 2, t.size))
    return fc, t


@pytest.fixture(scope="module")     # module-scoped: conftest keeps the tests that use it on one worker
def fit_once():
    return shared_fit.fit_once


def test_history_and_model_survive_a_restart(tmp_path, fit_once):
    path = tmp_path / "gateway.sqlite"
    fc, t = _seeded()
    now = t[-1]
    fit_once(fc, now)
    store = ForecastStore(str(path))
    assert store.save_minutes(*fc.drain_dirty()) == t.size
    assert fc.drain_dirty() == ([], [], [])  # drained: nothing is written twice
    store.save_model(fc.model_blob())
    before = fc.predict(now)

    restarted = DemandForecaster(validation_days=2)
    loaded = ForecastStore(str(path)).load_into(restarted, now)
    assert loaded == {"minutes": t.size, "model": True, "set_aside": []}
    assert restarted.history_minutes() == fc.history_minutes()
    assert not restarted.needs_fit(now + 60)  # no re-learning
    after = restarted.predict(now)
    assert after.model == before.model == MODEL_NAME
    assert after.demand_kw == pytest.approx(before.demand_kw)
    assert after.high_threshold_kw == pytest.approx(before.high_threshold_kw)

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"forecast_minute", "forecast_model", "forecast_issue", "forecast_demand", "forecast_set_aside"}


def test_partial_minutes_merge_across_saves(tmp_path):
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    fc = DemandForecaster()
    fc.add_sample(T0 + 10, 100.0)
    store.save_minutes(*fc.drain_dirty())
    fc.add_sample(T0 + 20, 200.0)  # same minute: the row is rewritten with the full sum and count
    store.save_minutes(*fc.drain_dirty())
    back = DemandForecaster()
    store.load_into(back, T0 + 30)
    assert back.predict(T0 + 30).demand_kw[15] == pytest.approx(150.0)


def test_old_history_is_not_loaded_and_prune_drops_it(tmp_path):
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    fc = DemandForecaster(history_days=50)
    t = T0 + np.arange(0, 50 * 86400, 3600.0)
    fc.seed(t, np.full(t.size, 10.0))
    store.save_minutes(*fc.drain_dirty())
    back = DemandForecaster(history_days=2)
    assert back.keep_days == 44  # the features' 43-day look-back, plus the day replay predicts at once
    assert store.load_into(back, t[-1])["minutes"] == 44 * 24 + 1
    store.prune(t[-1] - 86400)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM forecast_minute").fetchone()[0] == 25


def test_an_imported_historys_events_load_with_it_and_go_with_its_age_or_a_forget(tmp_path):
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    old, recent = (T0 - 50 * 86400, T0 - 50 * 86400 + 3600), (T0 - 86400, T0 - 86400 + 7200)
    assert store.import_minutes([int(T0 // 60)], [10.0], [1], sheds=[old, recent, recent]) == (1, 2)
    assert store.load_into(DemandForecaster(), T0)["set_aside"] == [recent]   # the old one is past what is kept
    store.prune(T0 - 2 * 86400)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT start, end FROM forecast_set_aside").fetchall() == [recent]
    store.forget()
    assert store.load_into(DemandForecaster(), T0)["set_aside"] == []


def test_a_file_an_older_version_made_has_no_events_table_and_loads(tmp_path):
    path = tmp_path / "g.sqlite"
    ForecastStore(str(path)).save_minutes([int(T0 // 60)], [10.0], [1])
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE forecast_set_aside")
    path.chmod(0o444)   # read as it is: nothing creates the table
    try:
        loaded = ForecastStore(str(path), read_only=True).load_into(DemandForecaster(), T0)
    finally:
        path.chmod(0o644)
    assert loaded["minutes"] == 1 and loaded["set_aside"] == []


def test_unusable_model_blob_means_refit_not_crash(tmp_path):
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    store.save_model(b"not a pickle")
    fc, t = _seeded(3)
    assert store.load_into(fc, t[-1])["model"] is False
    assert fc.needs_fit(t[-1])


def test_a_model_fitted_on_other_features_is_refitted_not_served(tmp_path, caplog, fit_once):
    import dataclasses
    import logging
    import pickle

    fc, t = _seeded()
    fit_once(fc, t[-1])         # the fit test_history_and_model_survive_a_restart makes
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    caplog.set_level(logging.INFO, logger="forecaster.store")
    # earlier versions: fewer feature columns; the same columns but three members, not four; a later version
    # (a downgrade): a class this one does not have
    for older in (pickle.dumps(dataclasses.replace(fc.fitted_model, features=fc.fitted_model.features[:-3])),
                  pickle.dumps(dataclasses.replace(fc.fitted_model, name="hgb+ridge+plain")),
                  b"cforecaster.model\nMembersOfALaterVersion\n."):
        store.save_model(older)
        fresh, _ = _seeded()
        assert store.load_into(fresh, t[-1])["model"] is False
        assert fresh.needs_fit(t[-1]) and fresh.predict(t[-1]).model == "persistence"
    # an upgrade is no fault: one INFO line each, saying why
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[1] == ("INFO", "stored forecast model not used: model of kind 'hgb+ridge+plain', this version fits "
                               "'hgb+ridge+plain+mlp' (fitted by another version of edge-gateway); a new one is fitted "
                               "from the stored history"), said
    assert [level for level, _ in said] == ["INFO"] * 3, said
    assert "its classes are not in this version (Can't get attribute 'MembersOfALaterVersion'" in said[2][1], said
    store.save_model(pickle.dumps(fc.fitted_model))
    assert store.load_into(_seeded()[0], t[-1])["model"] is True


def test_a_model_fitted_for_other_horizons_or_calendar_is_refitted_not_served(tmp_path, caplog):
    # A technician changes forecaster.horizons_minutes, timezone or holidays and restarts: the stored model has
    # no model for a new horizon, and reads the day shifted in another zone; it must not serve until the daily refit.
    import dataclasses
    import logging
    import pickle

    def seeded(**settings):
        fc = DemandForecaster(validation_days=2, **settings)
        fc.seed(t, office(t) + np.random.default_rng(0).normal(0, 2, t.size))
        return fc

    t = T0 + np.arange(0, 4 * 86400, 900.0)
    fitted = seeded(holidays=("12-08", "01-06"))
    fitted.fit(t[-1])
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    store.save_model(fitted.model_blob())
    caplog.set_level(logging.INFO, logger="forecaster.store")
    for changed in ({"horizons_minutes": (15, 90)}, {"horizons_minutes": (30, 60)}, {"timezone": "Europe/Rome"},
                    {"holiday_preset": "IT"}, {"holidays": ("12-08",)},
                    {"rest_weekdays": ("saturday",), "partial_weekdays": ()}):
        fresh = seeded(**{"holidays": ("12-08", "01-06"), **changed})
        assert store.load_into(fresh, t[-1])["model"] is False, changed
        assert fresh.needs_fit(t[-1]) and fresh.predict(t[-1]).model == "persistence"
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == ("stored forecast model not used: fitted for horizons 15/60 min, not 15/90 (the configuration "
                       "changed); a new one is fitted from the stored history")
    assert ("fitted for time zone UTC, holiday preset none and holidays ['01-06', '12-08'], not time zone Europe/Rome, "
            "holiday preset none and holidays ['01-06', '12-08']") in said[2]
    assert ("fitted for time zone UTC, holiday preset none and holidays ['01-06', '12-08'], not time zone UTC, holiday "
            "preset none and holidays ['01-06', '12-08'], resting saturday and partly open no day") in said[5]
    assert len(said) == 6 and all(r.levelno == logging.INFO for r in caplog.records)
    # the same settings keep it (holidays in another order too, the Saturday-Sunday week said or not), and so does a
    # model from before they were recorded
    assert store.load_into(seeded(holidays=["01-06", "12-08", "01-06"]), t[-1])["model"] is True
    assert store.load_into(seeded(holidays=("12-08", "01-06"), rest_weekdays=["sunday"]), t[-1])["model"] is True
    store.save_model(pickle.dumps(dataclasses.replace(fitted.fitted_model, calendar=())))
    assert store.load_into(seeded(timezone="Europe/Rome"), t[-1])["model"] is True
    # a fit that left a horizon out (too few rows for it) was asked for the same ones: kept, not "changed"
    model = fitted.fitted_model
    store.save_model(pickle.dumps(dataclasses.replace(model, horizons={15: model.horizons[15]})))
    assert store.load_into(seeded(holidays=("12-08", "01-06")), t[-1])["model"] is True
    store.save_model(pickle.dumps(dataclasses.replace(model, horizons={15: model.horizons[15]}, asked=())))
    assert store.load_into(seeded(holidays=("12-08", "01-06")), t[-1])["model"] is False


def test_history_for_the_http_endpoint(tmp_path):
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    fc = DemandForecaster(high_load_kw=150.0, min_on_minutes=0, min_off_minutes=0)
    for i in range(5):
        fc.add_sample(T0 + 60 * i, 100.0 + 60 * i)
        store.save_minutes(*fc.drain_dirty())
        store.record_forecast(fc.predict(T0 + 60 * i))
    h = store.history(T0 - 60)
    assert h["power"]["kw"] == pytest.approx([100.0, 160.0, 220.0, 280.0, 340.0])
    assert sorted(h["forecasts"]) == [15, 60]
    assert h["forecasts"][60]["target_time"][0] == T0 + 3600
    assert h["flags"]["high_load"] == [False, False, True, True, True]  # 15-min means 100, 130, 160, ...
    assert h["flags"]["model"] == ["persistence"] * 5
    assert store.history(T0 + 3600 * 5)["power"]["kw"] == []


def test_a_stored_model_serves_without_scikit_learn(tmp_path, fit_once):
    # The gateway fits in a child process; the serving process must never need scikit-learn or scipy.
    import subprocess
    import sys
    from pathlib import Path

    fc, t = _seeded()
    fit_once(fc, t[-1])         # the fit test_history_and_model_survive_a_restart makes
    t = [float(x) for x in t]
    path = tmp_path / "gateway.sqlite"
    store = ForecastStore(str(path))
    store.save_minutes(*fc.drain_dirty())
    store.save_model(fc.model_blob())
    expected = fc.predict(t[-1]).demand_kw[60]
    script = f"""
import sys
import ven.app, ven.forecast_service, ven.http_api, ven.vtn
from forecaster import DemandForecaster
from forecaster.store import ForecastStore
fc = DemandForecaster(validation_days=2)
ForecastStore({str(path)!r}).load_into(fc, {t[-1]!r})
f = fc.predict({t[-1]!r})
print(f.model, f.demand_kw[60], sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    name, kw, loaded = out.stdout.split(" ", 2)
    assert name == MODEL_NAME and float(kw) == pytest.approx(expected)
    assert loaded.strip() == "[]"


def test_after_a_boot_at_2020_the_stored_history_serves_again_once_the_clock_is_right(tmp_path):
    # 3 days written at the right time; the box boots with its clock at 2020 and NTP puts it right.
    store = ForecastStore(str(tmp_path / "g.sqlite"))
    fc, t = _seeded(3)
    store.save_minutes(*fc.drain_dirty())
    now = t[-1] + 300
    fc = DemandForecaster(validation_days=2)
    assert store.load_into(fc, 1577836800.0)["minutes"] == t.size     # the start at 2020 loads it all
    for i in range(3):
        assert fc.add_sample(1577836800.0 + 5 * i, 50.0)                # 2020: far behind the history
    store.prune(1577836800.0 - fc.keep_days * 86400)                     # a prune at 2020 deletes nothing newer
    store.save_minutes(*fc.drain_dirty())
    assert fc.add_sample(now, 120.0) and fc.clock_resets == 2 and fc.history_minutes() == 1
    # a minute past `now` (stamped by a clock that ran ahead) stays out; the one held in memory stays as is
    store.save_minutes([math.ceil(now / 60) + 5], [999.0], [1])
    assert store.reload_into(fc, now - fc.keep_days * 86400, now) == t.size
    assert fc.history_minutes() == t.size + 1 and fc.status()["history_last"] < now
    f = fc.predict(now)
    assert f.high_threshold_kw is not None and f.demand_kw[15] is not None


def test_a_file_a_newer_version_gave_more_columns_still_takes_forecasts(tmp_path):
    # after a downgrade: the columns this version writes are named, so the newer ones take their defaults
    path = tmp_path / "gateway.sqlite"
    fc, t = _seeded(days=1)
    ForecastStore(str(path))
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE forecast_issue ADD COLUMN confidence REAL")
        db.execute("ALTER TABLE forecast_demand ADD COLUMN lower_kw REAL")
    f = fc.predict(t[-1])
    ForecastStore(str(path)).record_forecast(f)
    stored = ForecastStore(str(path)).history(t[0])
    assert stored["flags"]["time"] == [f.issued_at]
    assert stored["forecasts"][15]["forecast_kw"] == [pytest.approx(f.demand_kw[15])]


def test_a_restart_early_in_a_minute_is_no_clock_step_with_a_short_input_stale_seconds(tmp_path):
    # A BAS writing each second, the gateway restarted 3 s into a minute with input_stale_seconds = 30:
    # the restored newest time was the END of the last stored minute, 57 s after the last reading, so
    # the first reading after the restart logged a false "wall clock went back 54 s".
    start = 1_764_000_000.0 - 1_764_000_000.0 % 60    # a minute boundary
    fc = DemandForecaster(stale_seconds=30)
    for s in range(1, 124):                           # up to 3 s into the third minute
        assert fc.add_sample(start + s, 100.0)
    store = ForecastStore(str(tmp_path / "gateway.sqlite"))
    store.save_minutes(*fc.drain_dirty())
    restarted = DemandForecaster(stale_seconds=30)
    store.load_into(restarted, start + 125)
    assert restarted.newest_sample_at <= start + 123   # not later than the last reading could have been
    assert restarted.add_sample(start + 125, 100.0) and restarted.clock_steps == 0
    # a real step back is still one
    restarted = DemandForecaster(stale_seconds=30)
    store.load_into(restarted, start + 125)
    assert restarted.add_sample(start + 60, 100.0) and restarted.clock_steps == 1

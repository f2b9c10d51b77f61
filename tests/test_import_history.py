"""`edge-gateway import-history`: a building's history put into a real storage.path file, and a gateway's forecaster
starting on it with its thresholds, a fit at once and the history's events kept out of learning."""
from __future__ import annotations

import csv
import datetime as dt
import math
import os
import time
from pathlib import Path

import pytest
from fit_processes import fit_given_cpu
from gateway_process import write_config
from waiting import FIRST_CYCLE_SECONDS, eventually

from forecaster.core import DemandForecaster
from forecaster.model import MODEL_NAME
from forecaster.store import ForecastStore
from ven.config import ForecasterConfig
from ven.forecast_service import ForecastService
from ven.history import build_history
from ven.history_csv import history_csv
from ven.cli import main
from ven.run_lock import RunLock
from ven.storage import Storage

EXCERPT = Path(__file__).parent / "data" / "turin_office_excerpt.csv"
WEEK = 7 * 86400


def _config(tmp_path, free_udp_port):
    cfg, db = tmp_path / "gateway.toml", tmp_path / "gateway.sqlite"
    write_config(cfg, bacnet_port=free_udp_port(), http_port=9, storage=db, ven_name="ven-import")
    return cfg, db


def _write(path, rows, column="kw") -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("time", column))
        for t, kw in rows:
            w.writerow((dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(), kw))


def _excerpt_ending_this_week():
    """The Turin excerpt (ten days of 15-minute demand) moved by whole weeks to end within the last week: its workdays
    stay workdays, and it lies inside what the forecaster keeps."""
    with open(EXCERPT, newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = [dt.datetime.fromisoformat(r["timestamp"]).replace(tzinfo=dt.timezone.utc).timestamp() for r in rows]
    shift = math.floor((time.time() - t[-1]) / WEEK) * WEEK
    return [(x + shift, float(r["Total_Power"])) for x, r in zip(t, rows)]


def _import(cfg, csv_path, *more, column="kw") -> int:
    return main(["import-history", "--config", str(cfg), "--csv", str(csv_path), "--time-column", "time",
                 "--value-column", column, *more])


def test_it_imports_an_interval_export_and_a_second_run_adds_nothing(tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    end = math.floor(time.time() / 900) * 900 - 900
    rows = [(end - 900 * i, 100.0 + i % 7) for i in range(4 * 24 * 3)]     # three days of 15-minute demand
    _write(tmp_path / "meter.csv", rows)

    assert _import(cfg, tmp_path / "meter.csv") == 0
    said = capsys.readouterr().out
    assert f"storage.path {db}: imported 288 minute(s) of history, " \
           f"{dt.datetime.fromtimestamp(rows[-1][0], dt.timezone.utc):%Y-%m-%d %H:%M} to " \
           f"{dt.datetime.fromtimestamp(end, dt.timezone.utc):%Y-%m-%d %H:%M} UTC, from 288 row(s) of " \
           f"{tmp_path / 'meter.csv'} (100.0 to 106.0 kW, median 103.0 kW)" in said, said
    assert "spans 3.0 days: the next start fits a model on it at once, in a minute or so (longer on a busy box: the " \
           "fit takes idle CPU only), persistence serving meanwhile (it serves once a day of its live forecasts" \
           in said, said
    held = ForecastStore(str(db)).held_means(0, 2 ** 40)
    # a reading stamped 12:15:00 is the minute 12:14-12:15's, as the gateway files one read then
    assert held == {int(t // 60): kw for t, kw in rows}

    assert _import(cfg, tmp_path / "meter.csv") == 0
    assert "imported 0 minute(s)" in (said := capsys.readouterr().out) and "288 minute(s) it held already kept as " \
        "read (to replace an earlier import: forget-forecast --yes first). Nothing new" in said, said


def test_the_gateways_own_history_csv_goes_back_minute_for_minute(tmp_path, free_udp_port, capsys):
    # a box replaced: /api/history.csv of the old one, whose minutes are named by their start, into the new one
    old = ForecastStore(str(tmp_path / "old.sqlite"))
    now = math.floor(time.time() / 60) * 60
    ks = [int(now // 60) - i for i in range(0, 240, 3)]
    old.save_minutes(ks, [600.0 + k % 17 for k in ks], [6] * len(ks))
    (tmp_path / "history.csv").write_text(history_csv(build_history(now, 5, old.history(now - 5 * 3600))))
    cfg, db = _config(tmp_path, free_udp_port)

    assert main(["import-history", "--config", str(cfg), "--csv", str(tmp_path / "history.csv"), "--time-column",
                 "minute", "--value-column", "power_kw", "--stamped", "start"]) == 0
    out, err = capsys.readouterr()
    assert "times read as the start of each row's 60 s interval: filed at its end" in err
    # the range as the file names its rows, and as forget-forecast names the minutes: it read "12:16 to 12:18" of
    # rows 12:15 to 12:17, their ends, the operator looking for a shifted zone (helper newcomer49)
    rows = [line.split(",") for line in (tmp_path / "history.csv").read_text().splitlines()[1:]]
    minutes = [minute[:16].replace("T", " ") for minute, power, *_ in rows if power]
    assert f"imported {len(ks)} minute(s) of history, {minutes[0]} to {minutes[-1]} UTC, from" in out, (minutes, out)
    assert ForecastStore(str(db)).held_means(0, 2 ** 40) == pytest.approx(old.held_means(0, 2 ** 40), abs=5e-4)


def test_a_file_only_the_import_wrote_is_a_first_runs(tmp_path, free_udp_port):
    # the first run on it said "BACnet objects of the last run not recorded (an earlier version wrote it)" and
    # counted a databaseRevision for a device that had never run
    cfg, db = _config(tmp_path, free_udp_port)
    _write(tmp_path / "meter.csv", [(time.time() - 600, 100.0)])
    assert _import(cfg, tmp_path / "meter.csv") == 0
    storage = Storage(db)
    try:
        assert storage.found_file is False
        storage.save_value("a", "b")
    finally:
        storage.close()
    storage = Storage(db)       # a run's file
    try:
        assert storage.found_file is True
    finally:
        storage.close()


def test_what_the_gateway_read_keeps_its_readings_and_its_model_is_dropped(tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 60) * 60
    store = ForecastStore(str(db))
    live = range(int(now // 60) - 59, int(now // 60) + 1)      # the last hour, read by the gateway
    store.save_minutes(live, [600.0] * 60, [6] * 60)   # six readings a minute
    store.save_model(b"a model fitted without the import")
    _write(tmp_path / "meter.csv", [(now - 60 * i, 102.0) for i in range(180)])

    assert _import(cfg, tmp_path / "meter.csv") == 0
    said = capsys.readouterr().out
    assert "imported 120 minute(s)" in said and "60 minute(s) it held already kept as read (to replace an earlier " \
        "import: forget-forecast --yes first); the stored model, fitted before these, deleted. The history held " \
        "spans 0.1 days; the first model is fitted once it spans 2 days" in said
    held = store.held_means(0, 2 ** 40)
    assert all(held[k] == 100.0 for k in live)
    assert sum(1 for v in held.values() if v == 102.0) == 120
    assert store.contents()["model"] is False   # the next start fits on the whole history at once


def test_a_file_in_another_unit_than_the_gateways_readings_is_refused(tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 60) * 60
    store = ForecastStore(str(db))
    store.save_minutes(range(int(now // 60) - 29, int(now // 60) + 1), [12.0] * 30, [1] * 30)
    _write(tmp_path / "watts.csv", [(now - 60 * i, 12_000.0) for i in range(120)], column="P")   # W, taken as kW

    assert _import(cfg, tmp_path / "watts.csv", column="P") == 1
    said = capsys.readouterr().err
    assert "over the 30 minutes the file shares with storage.path its values (median 12000 kW) are 1,000 times those " \
           "it holds (median 12 kW): another unit (--value-unit), another meter or another time zone (--timezone). " \
           "Nothing imported. If what it holds is an earlier import that was wrong, `edge-gateway forget-forecast " \
           "--yes` deletes the forecaster's history first" in said
    assert store.contents()["minutes"] == 30
    assert _import(cfg, tmp_path / "watts.csv", "--value-unit", "W", column="P") == 0
    assert store.contents()["minutes"] == 120


def test_events_given_later_for_a_history_held_are_taken_and_the_model_refitted(tmp_path, free_udp_port, capsys):
    # the minutes imported already, their events given afterwards: it said "Nothing new" and kept a model that had
    # learned the sheds as normal afternoons
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 900) * 900
    _write(tmp_path / "meter.csv", [(now - 900 * i, 100.0) for i in range(300)])
    assert _import(cfg, tmp_path / "meter.csv") == 0
    ForecastStore(str(db)).save_model(b"a model that learned the sheds")
    start, end = (dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in (now - 86400, now - 80000))
    (tmp_path / "events.csv").write_text(f"start,end\n{start:%Y-%m-%dT%H:%M}Z,{end:%Y-%m-%dT%H:%M}Z\n")
    capsys.readouterr()
    assert _import(cfg, tmp_path / "meter.csv", "--events", str(tmp_path / "events.csv")) == 0
    said = capsys.readouterr().out
    assert "imported 0 minute(s)" in said and "1 event(s) kept out of learning (1 new); the stored model, fitted " \
        "before these, deleted." in said and "Nothing new" not in said, said
    assert ForecastStore(str(db)).contents()["model"] is False


def test_a_storage_directory_that_cannot_be_made_is_one_line(tmp_path, free_udp_port, capsys):
    cfg, _ = _config(tmp_path, free_udp_port)
    (tmp_path / "a-file").write_text("")
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "gateway.sqlite"), str(tmp_path / "a-file" / "gw.sqlite")))
    _write(tmp_path / "meter.csv", [(time.time() - 600, 100.0)])
    assert _import(cfg, tmp_path / "meter.csv") == 1
    err = capsys.readouterr().err
    assert f"cannot make {tmp_path / 'a-file'}: File exists: nothing imported" in err and "Traceback" not in err, err


def test_a_no_data_mark_far_outside_the_others_is_named_and_left_out(tmp_path, free_udp_port, capsys):
    # a BAS export's -99999 lies inside the default input range: it failed the first model's check and stretched
    # the dashboard's chart to -120,000 kW
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 900) * 900
    rows = [(now - 900 * i, 300.0 + 800.0 * (i % 96 > 40)) for i in range(500)]
    rows[17] = (rows[17][0], -99999.0)
    _write(tmp_path / "meter.csv", rows)

    assert _import(cfg, tmp_path / "meter.csv") == 0
    out, err = capsys.readouterr()
    assert "1 row(s) far outside all the others (line 19: -99999 kW): a \"no data\" mark or a glitch? not imported" \
        in err, err
    assert "imported 499 minute(s)" in out and "(300.0 to 1,100.0 kW, median 1,100.0 kW)" in out, out
    assert min(ForecastStore(str(db)).held_means(0, 2 ** 40).values()) == 300.0


@pytest.mark.skipif(os.geteuid() != 0, reason="the check is for a root that would make the gateway's files")
def test_as_root_it_refuses_to_make_files_where_another_user_owns_the_place(tmp_path, free_udp_port, capsys):
    # the storage directory not made yet: root made it and the store, and the gateway's user could not write them
    cfg, _ = _config(tmp_path, free_udp_port)
    site = tmp_path / "var-lib"
    site.mkdir()
    os.chown(site, 65534, 65534)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "gateway.sqlite"), str(site / "state" / "gw.sqlite")))
    _write(tmp_path / "meter.csv", [(time.time() - 600, 100.0)])
    assert _import(cfg, tmp_path / "meter.csv") == 1
    assert f"{site} belongs to uid 65534, and this runs as root: run it as the gateway's user" in \
        capsys.readouterr().err
    assert not (site / "state").exists()


def test_a_time_format_that_fits_few_rows_is_refused_not_a_partial_import(tmp_path, free_udp_port, capsys):
    # month and day swapped: the rows past the 12th do not parse, the others land on other dates
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 3600) * 3600
    stamps = [dt.datetime.fromtimestamp(now - 3600 * i, dt.timezone.utc) for i in range(24 * 40)]
    (tmp_path / "us.csv").write_text("time,kw\n" + "".join(f"{t:%m/%d/%Y %H:%M},100\n" for t in stamps))
    assert _import(cfg, tmp_path / "us.csv", "--time-format", "%d/%m/%Y %H:%M", "--timezone", "UTC") == 1
    err = capsys.readouterr().err
    assert "row(s) could not be read, more than the" in err and "check --time-format, --decimal and the columns. " \
        "Nothing imported" in err, err
    assert not db.exists() or ForecastStore(str(db)).contents()["minutes"] == 0


def test_rows_older_than_kept_or_after_now_are_named_and_left_out(tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 60) * 60
    keep_days = DemandForecaster().keep_days
    rows = [(now - keep_days * 86400 - 3600, 90.0), (now - 3600, 100.0), (now - 1800, 100.0), (now + 7200, 110.0)]
    _write(tmp_path / "meter.csv", rows)

    assert _import(cfg, tmp_path / "meter.csv") == 0
    out, err = capsys.readouterr()
    assert "1 row(s) before " in err and f"not imported: older than the {keep_days:g} days the forecaster keeps" in err
    assert "1 row(s) after now" in err and "not imported: is the file in another time zone (--timezone), or this " \
        "machine's clock wrong?" in err
    assert "imported 2 minute(s)" in out
    assert sorted(ForecastStore(str(db)).held_means(0, 2 ** 40).values()) == [100.0, 100.0]


def test_it_refuses_while_a_gateway_holds_the_file(tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    _write(tmp_path / "meter.csv", [(time.time() - 600, 100.0)])
    held = RunLock(db)
    assert held.take() is None
    try:
        assert _import(cfg, tmp_path / "meter.csv") == 1
    finally:
        held.close()
    assert "the gateway seems to run. Stop it first" in capsys.readouterr().err
    assert not db.exists() or ForecastStore(str(db)).contents()["minutes"] == 0


@pytest.mark.timeout(150)
async def test_a_gateway_started_on_an_imported_history_has_thresholds_fits_at_once_and_sets_the_events_aside(
        tmp_path, free_udp_port, capsys):
    cfg, db = _config(tmp_path, free_udp_port)
    rows = _excerpt_ending_this_week()
    _write(tmp_path / "meter.csv", rows)
    shed = (rows[400][0], rows[412][0])     # an afternoon the building shed for an event: three hours
    with open(tmp_path / "events.csv", "w") as fh:
        fh.write("start,end\n" + ",".join(dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() for t in shed)
                 + "\n")
    assert _import(cfg, tmp_path / "meter.csv", "--events", str(tmp_path / "events.csv")) == 0
    assert "1 event(s) kept out of learning (1 new)" in capsys.readouterr().out

    published = []
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), str(db), publish=published.append)
    await svc.start()
    try:
        await eventually(lambda: published, FIRST_CYCLE_SECONDS, "the first forecast")
        # thresholds from the imported days at once, where a new install waits a day of its own readings
        assert published[0].high_threshold_kw is not None and published[0].low_threshold_kw is not None
        first, last = svc.forecaster.curtailed[0]
        assert first == math.floor(shed[0] / 60) + 1 and last == math.floor((shed[1] + 3600) / 60)  # rebound too
        assert svc.status()["history_minutes"] == len(rows)
        await eventually(lambda: fit_given_cpu() or svc.status()["last_fit_at"] is not None, 120, "the first fit")
        served = svc.status()["horizons"][60]
    finally:
        await svc.stop()
    # checked on the imported history's last week, as a gateway with a week of its own is: and it serves
    assert served["serving"] == MODEL_NAME
    assert served["validation_rmse_kw"] < served["validation_persistence_rmse_kw"]


def test_rows_over_the_input_bound_are_not_in_the_range_it_reports_and_many_ask_for_the_bound(
        tmp_path, free_udp_port, capsys):
    # A 150 MW site under the default bound (100,000 kW): its last line gave "49,035.7 to 171,676.2 kW", past the bound
    # that had refused those rows, and the thresholds came from what was left (helper loads39 W5, C6)
    cfg, db = _config(tmp_path, free_udp_port)
    now = math.floor(time.time() / 900) * 900
    rows = [(now - 900 * i, 150_000.0 if i % 96 > 60 else 50_000.0) for i in range(500)]
    _write(tmp_path / "meter.csv", rows)

    assert _import(cfg, tmp_path / "meter.csv") == 0
    out, err = capsys.readouterr()
    refused = sum(kw > 100_000 for _, kw in rows)
    assert f"{refused} row(s) outside bacnet.input_min_kw..input_max_kw (-100000..100000 kW) not imported; if they " \
           "are the site's demand, raise bacnet.input_max_kw and import again" in err, err
    assert f"imported {500 - refused} minute(s)" in out and "(50,000.0 to 50,000.0 kW, median 50,000.0 kW)" in out, out


def test_a_time_in_the_hour_a_clock_change_repeats_is_said_with_its_zone():
    # a file ending in New York's repeated hour was said to end "2026-11-01 01:37 America/New_York": either pass
    from zoneinfo import ZoneInfo

    from ven.import_history import _local
    ny = ZoneInfo("America/New_York")
    first, second = (dt.datetime(2026, 11, 1, 1, 37, tzinfo=ny, fold=f).timestamp() for f in (0, 1))
    assert (_local(first, ny), _local(second, ny)) == ("2026-11-01 01:37 EDT", "2026-11-01 01:37 EST")
    # elsewhere the wall time is enough, as before
    assert _local(dt.datetime(2026, 11, 1, 3, 0, tzinfo=ny).timestamp(), ny) == "2026-11-01 03:00"
    assert _local(0.0, ZoneInfo("UTC")) == "1970-01-01 00:00"


def test_a_read_only_file_system_is_named(tmp_path, free_udp_port, capsys):
    # SQLite's "unable to open database file" alone, where the gateway's own line names the file system's reason
    from test_faults_storage import remount, tmpfs

    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        cfg, _ = _config(disk, free_udp_port)
        _write(disk / "meter.csv", [(time.time() - 600, 100.0)])
        remount(disk, "ro")
        assert _import(cfg, disk / "meter.csv") == 1
        err = capsys.readouterr().err
    assert "(Read-only file system): nothing imported" in err and "Traceback" not in err, err

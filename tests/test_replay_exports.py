"""forecast-replay on what building systems export: European separators and decimal marks, title lines
above the header, other encodings, non-ISO times, values in W or MW. Nothing is guessed that could read a
number or a date wrongly: such a file is refused with the option that settles it."""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from forecaster.export_csv import read_export, read_series
from forecaster.replay import ReplayInputError, replay_csv
from ven.cli import main

TURIN = Path(__file__).parents[1] / "ven" / "data" / "turin_office_2019.csv"
UTC = ZoneInfo("UTC")


def _turin(n=8):
    """The first n readings of the shipped building: (naive times, kW)."""
    with open(TURIN, newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [dt.datetime.fromisoformat(r["timestamp"]) for r in rows], [float(r["Total_Power"]) for r in rows]


def _epoch(times, tz=UTC):
    return [t.replace(tzinfo=tz).timestamp() for t in times]


def _replay(src, out, *options, time_column="timestamp", value_column="kw"):
    return main(["forecast-replay", "--csv", str(src), "--time-column", time_column, "--value-column",
                 value_column, "--output", str(out), "--fit-processes", "1", *options])


def _comma(x: float) -> str:
    return f"{x}".replace(".", ",")


def test_a_european_semicolon_export_with_title_lines_in_cp1252(tmp_path, capsys):
    times, kw = _turin()
    src, out = tmp_path / "desigo.csv", tmp_path / "pred.csv"
    text = ("Trend export;Turin office\r\nExported;01.11.2019 08:00\r\n\r\n"
            "Zeit;Leistung;Außentemp. °C;\r\n"
            + "".join(f"{t:%Y-%m-%d %H:%M:%S};{_comma(v)};12,5;\r\n" for t, v in zip(times, kw)))
    src.write_bytes(text.encode("cp1252"))
    assert _replay(src, out, time_column="Zeit", value_column="Leistung") == 1
    err = capsys.readouterr().err
    assert "line 4, byte 17: 0xdf is not UTF-8; pass the file's encoding (--encoding cp1252" in err
    assert err.count("\n") == 1 and not out.exists()
    assert _replay(src, out, "--encoding", "cp1252", time_column="Zeit", value_column="Leistung") == 0
    err = capsys.readouterr().err
    assert err == "forecast-replay: read desigo.csv: header on line 4, ';'-separated, decimal comma\n"
    with open(out, newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["issued_at"] == "2019-10-07T00:00:00+00:00" and float(first["forecast_kw"]) == kw[0]


@pytest.mark.parametrize("name, sep, line", [
    ("tab, decimal point", "\t", "{t}\t{v}\n"),
    ("tab, decimal comma", "\t", "{t}\t{vc}\n"),
    ("quoted, trailing empty column, CRLF", ",", '"{t}","{v}",\r\n'),
    ("semicolon, quoted decimal comma", ";", '"{t}";"{vc}"\n'),
    ("semicolon, decimal point", ";", "{t};{v}\n"),
    ("thousands, comma-separated", ",", '{t},"{v1000:,}"\n'),
    ("thousands, semicolon and decimal comma", ";", "{t};{v1000eu}\n"),
    ("unit in the cell", ",", "{t},{v} kW\n"),
    ("watts in the cell", ",", "{t},{w:.0f} W\n"),
])
def test_separators_decimal_marks_and_units_read_the_same_kw(tmp_path, name, sep, line):
    times, kw = _turin()
    src = tmp_path / "in.csv"
    src.write_text(f"timestamp{sep}kw\n" + "".join(line.format(
        t=f"{t:%Y-%m-%d %H:%M:%S}", v=v, vc=_comma(v), w=v * 1000, v1000=v + 1000,
        v1000eu=f"{v + 1000:,}".replace(",", "_").replace(".", ",").replace("_", "."))
        for t, v in zip(times, kw)), newline="")
    t, v, skipped = read_series(src, "timestamp", "kw", UTC)
    expected = [x + 1000 for x in kw] if "thousands" in name else kw
    assert skipped == 0 and list(t) == _epoch(times) and v == pytest.approx(expected, rel=1e-12)


def test_units_written_in_the_cells_are_said_in_how_the_file_was_read(tmp_path):
    from forecaster.export_csv import read_export
    src = tmp_path / "in.csv"
    src.write_text("timestamp,kw\n2019-10-07 00:00:00,98000 W\n2019-10-07 00:15:00,0.1 MW\n")
    *_, reading = read_export(src, "timestamp", "kw", UTC)
    assert reading == "read in.csv: values with their unit (MW, W), converted to kW"
    src.write_text("timestamp,kw\n2019-10-07 00:00:00,98 kW\n")   # kW as it is: nothing to say
    *_, reading = read_export(src, "timestamp", "kw", UTC)
    assert reading is None


def test_a_decimal_comma_in_a_comma_separated_file_is_refused_not_cut_to_its_integer(tmp_path):
    # "113,2" split into fields "113" and "2" used to replay 113 kW without a word
    src = tmp_path / "in.csv"
    src.write_text("timestamp,kw\n2019-10-07 00:00:00,113,2\n2019-10-07 00:15:00,116\n")
    t, v, skipped = read_series(src, "timestamp", "kw", UTC)
    assert skipped == 1 and list(v) == [116.0]
    one = tmp_path / "one.csv"
    one.write_text("timestamp,kw\n2019-10-07 00:00:00,113,2\n")
    with pytest.raises(ReplayInputError, match=r"line 2: has 3 fields, the header 2 \(an unquoted decimal comma"):
        replay_csv(one, "timestamp", "kw", tmp_path / "out.csv")


def test_thousands_separators_are_read_not_skipped(tmp_path):
    # "1,440.0" used to be skipped while "979.2" was kept: a replay of only the building's quiet hours
    src = tmp_path / "in.csv"
    src.write_text('timestamp,kw\n2019-10-07 00:00:00,"979.2"\n2019-10-07 00:15:00,"1,440.0"\n')
    t, v, skipped = read_series(src, "timestamp", "kw", UTC)
    assert skipped == 0 and list(v) == [979.2, 1440.0]


def test_a_decimal_mark_the_values_do_not_settle_is_asked_for(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("timestamp;kw\n2019-10-07 00:00:00;113,2\n2019-10-07 00:15:00;116.4\n")
    with pytest.raises(ReplayInputError, match=r"mix decimal points \(line 3: '116.4'\) and decimal commas "
                                               r"\(line 2: '113,2'\); pass --decimal"):
        read_series(src, "timestamp", "kw", UTC)
    src.write_text("timestamp;kw\n2019-10-07 00:00:00;1.132\n2019-10-07 00:15:00;1.164\n")
    with pytest.raises(ReplayInputError, match=r"line 2: value '1.132' has a decimal or a thousands separator"):
        read_series(src, "timestamp", "kw", UTC)
    assert list(read_series(src, "timestamp", "kw", UTC, decimal=",")[1]) == [1132.0, 1164.0]
    assert list(read_series(src, "timestamp", "kw", UTC, decimal=".")[1]) == [1.132, 1.164]


def test_only_a_number_proves_a_decimal_mark_and_thousands_never_start_with_zero(tmp_path):
    src = tmp_path / "in.csv"
    # a value that is no number ("1.2.3") proved decimal commas: the meter's 113.250 kW replayed as 113,250 kW
    src.write_text("timestamp,kw\n2019-10-07 00:00:00,113.250\n2019-10-07 00:15:00,1.2.3\n")
    with pytest.raises(ReplayInputError, match=r"line 2: value '113.250' has a decimal or a thousands separator"):
        read_series(src, "timestamp", "kw", UTC)
    # 0,250 is a decimal comma, never 250 grouped in thousands, so it is refused beside a decimal point
    src.write_text('timestamp,kw\n2019-10-07 00:00:00,1.5\n2019-10-07 00:15:00,"0,250"\n')
    with pytest.raises(ReplayInputError, match=r"mix decimal points \(line 2: '1.5'\) and decimal commas "
                                               r"\(line 3: '0,250'\)"):
        read_series(src, "timestamp", "kw", UTC)
    # and a site in MW with three decimals is read, not asked for --decimal
    src.write_text("timestamp,P [MW]\n2019-10-07 00:00:00,0.113\n2019-10-07 00:15:00,0.116\n")
    assert list(read_series(src, "timestamp", "P [MW]", UTC)[1]) == [113.0, 116.0]


def test_a_time_that_is_not_iso_needs_its_format_and_day_month_is_never_guessed(tmp_path, capsys):
    times, kw = _turin()
    src, out = tmp_path / "dmy.csv", tmp_path / "pred.csv"
    src.write_text("timestamp,kw\n" + "".join(f"{t:%d/%m/%Y %H:%M},{v}\n" for t, v in zip(times, kw)))
    assert _replay(src, out) == 1
    err = capsys.readouterr().err
    assert ("line 2: time '07/10/2019 00:00' is not ISO 8601 or epoch seconds; give its format, e.g. "
            "--time-format '%d/%m/%Y %H:%M'") in err and not out.exists()
    t, v, _ = read_series(src, "timestamp", "kw", UTC, time_format="%d/%m/%Y %H:%M")
    assert list(t) == _epoch(times) and list(v) == kw
    with pytest.raises(ReplayInputError, match=r"time '07/10/2019 00:00' does not match --time-format '%m-%d-%Y'"):
        read_series(src, "timestamp", "kw", UTC, time_format="%m-%d-%Y")


def test_epoch_milliseconds_with_their_format(tmp_path):
    times, kw = _turin()
    src = tmp_path / "ms.csv"
    src.write_text("timestamp,kw\n" + "".join(f"{int(s * 1000)},{v}\n" for s, v in zip(_epoch(times), kw)))
    with pytest.raises(ReplayInputError, match=r"epoch milliseconds\? pass --time-format epoch-ms"):
        read_series(src, "timestamp", "kw", UTC)
    assert list(read_series(src, "timestamp", "kw", UTC, time_format="epoch-ms")[0]) == _epoch(times)


def test_niagara_times_with_a_zone_abbreviation_read_both_passes_of_the_autumn_hour(tmp_path):
    src = tmp_path / "niagara.csv"
    stamps = ["27-Oct-19 01:45 AM CEST", "27-Oct-19 02:30 AM CEST", "27-Oct-19 02:30 AM CET", "27-Oct-19 12:15 PM CET"]
    src.write_text("Timestamp,Value\n" + "".join(f"{s},{100 + i}\n" for i, s in enumerate(stamps)))
    fmt = "%d-%b-%y %I:%M %p %Z"
    t, _, _ = read_series(src, "Timestamp", "Value", ZoneInfo("Europe/Rome"), time_format=fmt)
    utc = [dt.datetime.fromtimestamp(x, dt.timezone.utc).strftime("%H:%M") for x in t]
    assert utc == ["23:45", "00:30", "01:30", "11:15"]
    with pytest.raises(ReplayInputError, match=r"says zone 'CEST', which is not what UTC calls that time \(UTC\); "
                                               r"set forecaster.timezone \(e.g. --timezone Europe/Rome\), or put the "
                                               r"name in --time-format in place of %Z"):
        read_series(src, "Timestamp", "Value", UTC, time_format=fmt)


def test_niagara_names_for_zones_the_time_zone_database_calls_by_their_offset(tmp_path):
    # tzdata calls Kathmandu "+0545", Lord Howe "+1030" / "+11", Chatham "+1245" / "+1345"; Java, and so Niagara, writes
    # NPT, LHST / LHDT, CHAST / CHADT. Every row of such a file was refused, the error asking for the zone already set.
    fmt = "%d-%b-%y %I:%M %p %Z"

    def utc(zone, stamps):
        src = tmp_path / "niagara.csv"
        src.write_text("Timestamp,Value\n" + "".join(f"{s},{100 + i}\n" for i, s in enumerate(stamps)))
        t, _, _ = read_series(src, "Timestamp", "Value", ZoneInfo(zone), time_format=fmt)
        return [dt.datetime.fromtimestamp(x, dt.timezone.utc).strftime("%d %H:%M") for x in t]

    assert utc("Asia/Kathmandu", ["02-Jan-19 12:15 PM NPT", "02-Jan-19 12:15 PM +0545"]) == ["02 06:30", "02 06:30"]
    # the autumn half hour twice: the name says which pass
    assert utc("Australia/Lord_Howe", ["05-Apr-26 01:45 AM LHDT", "05-Apr-26 01:45 AM LHST"]) == ["04 14:45",
                                                                                                  "04 15:15"]
    assert utc("Pacific/Chatham", ["05-Apr-26 02:45 AM CHADT", "05-Apr-26 02:45 AM CHAST"]) == ["04 13:00", "04 14:00"]
    # a name that contradicts the date is refused as before, saying what the zone calls that time
    with pytest.raises(ReplayInputError, match=r"says zone 'LHST', which is not what Australia/Lord_Howe calls that "
                                               r"time \(\+11\)"):
        utc("Australia/Lord_Howe", ["02-Jan-26 12:00 PM LHST"])
    # and so is a word the database gives to other offsets only: a Rome file read with the wrong --timezone
    assert utc("Asia/Dubai", ["02-Jan-19 12:15 PM GST"]) == ["02 08:15"]      # Java's word for Dubai: none's in tzdata
    with pytest.raises(ReplayInputError, match=r"says zone 'CET', which is not what Asia/Dubai calls that time"):
        utc("Asia/Dubai", ["02-Jan-19 12:15 PM CET"])


def test_separate_date_and_time_columns(tmp_path, capsys):
    times, kw = _turin()
    src, out = tmp_path / "in.csv", tmp_path / "pred.csv"
    src.write_text("Datum;Uhrzeit;kW\n" + "".join(f"{t:%d.%m.%Y};{t:%H:%M};{_comma(v)}\n" for t, v in zip(times, kw)))
    assert _replay(src, out, "--time-column", "Uhrzeit", "--time-format", "%d.%m.%Y %H:%M", "--timezone",
                   "Europe/Rome", time_column="Datum", value_column="kW") == 0
    with open(out, newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["issued_at"] == "2019-10-07T00:00:00+02:00" and float(first["forecast_kw"]) == kw[0]


def test_values_in_watts_or_megawatts(tmp_path):
    times, kw = _turin()
    src = tmp_path / "in.csv"
    src.write_text("timestamp,P\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{v / 1000}\n" for t, v in zip(times, kw)))
    assert read_series(src, "timestamp", "P", UTC, value_unit="MW")[1] == pytest.approx(kw, rel=1e-12)
    src.write_text("timestamp,P [W]\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{v * 1000:.0f}\n" for t, v in zip(times, kw)))
    assert read_series(src, "timestamp", "P [W]", UTC)[1] == pytest.approx(kw, rel=1e-12)
    with pytest.raises(ReplayInputError, match=r"column 'P \[W\]' says W, --value-unit says kW"):
        read_series(src, "timestamp", "P [W]", UTC, value_unit="kW")
    src.write_text(src.read_text().replace("P [W]", "S [kVAh]"))
    with pytest.raises(ReplayInputError, match=r"column 'S \[kVAh\]' says kVAh, not power \(W, kW, MW\) or energy "
                                               r"per interval \(Wh, kWh, MWh\)"):
        read_series(src, "timestamp", "S [kVAh]", UTC)
    src.write_text(src.read_text().replace("S [kVAh]", "P [W]"))
    summary = replay_csv(src, "timestamp", "P [W]", tmp_path / "out.csv", fit_processes=1)
    assert summary["notes"][0] == "read in.csv: values in W, converted to kW" and summary["accepted"] == len(kw)


@pytest.mark.parametrize("header, option", [("Usage (kWh)", None), ("kWh Delivered", None), ("Energy_kWh", None),
                                            ("Usage", "kWh"), ("Usage,UNITS", None)])
def test_energy_per_interval_is_read_as_the_intervals_mean_kw(tmp_path, header, option):
    # utility interval data and Green Button give kWh per 15-minute interval: read as kW it was a history 4 times
    # too low, and the load thresholds with it
    times, kw = _turin()
    src = tmp_path / "usage.csv"
    unit_cell = ",kWh" if "UNITS" in header else ""
    src.write_text(f"timestamp,{header}\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{v / 4:.4f}{unit_cell}\n"
                                                     for t, v in zip(times, kw)))
    column = header.split(",")[0]
    t, v, _, _, notes, _ = read_export(src, "timestamp", column, UTC, value_unit=option)
    assert v == pytest.approx(kw, abs=1e-3)
    assert "values in kWh per 15-minute interval, read as each interval's mean kW (x 4)" in notes


def test_energy_whose_spacing_changes_is_refused_and_gaps_are_not_a_change(tmp_path):
    # hourly kWh for months, then 15-minute (a meter upgraded): read at one spacing, the 15-minute part went in
    # 4 times low, and with --stamped start an hour late
    hourly = [dt.datetime(2026, 1, 1) + dt.timedelta(hours=i) for i in range(400)]
    quarter = [hourly[-1] + dt.timedelta(minutes=15 * (i + 1)) for i in range(300)]
    src = tmp_path / "mixed.csv"
    src.write_text("timestamp,Usage (kWh)\n" + "".join(f"{t:%Y-%m-%d %H:%M},100\n" for t in hourly)
                   + "".join(f"{t:%Y-%m-%d %H:%M},25\n" for t in quarter))
    with pytest.raises(ReplayInputError, match=r"the rows are \d+ minutes apart mostly, but [\d,]+ times \d+ minutes "
                                               r"or other \(first after .*\): energy per interval needs one spacing"):
        read_export(src, "timestamp", "Usage (kWh)", UTC)
    # the other way round: 15-minute for weeks, then hourly. The hourly steps are multiples of 15 minutes, and were
    # taken for gaps: the hourly kWh went in 4 times high
    fine = [dt.datetime(2026, 1, 1) + dt.timedelta(minutes=15 * i) for i in range(600)]
    coarse = [fine[-1] + dt.timedelta(hours=i + 1) for i in range(100)]
    src.write_text("timestamp,Usage (kWh)\n" + "".join(f"{t:%Y-%m-%d %H:%M},25\n" for t in fine)
                   + "".join(f"{t:%Y-%m-%d %H:%M},100\n" for t in coarse))
    with pytest.raises(ReplayInputError, match=r"energy per interval needs one spacing"):
        read_export(src, "timestamp", "Usage (kWh)", UTC)
    gaps = [t for i, t in enumerate(quarter) if i % 7]       # every seventh row missing: still one spacing
    src.write_text("timestamp,Usage (kWh)\n" + "".join(f"{t:%Y-%m-%d %H:%M},25\n" for t in gaps))
    assert set(read_export(src, "timestamp", "Usage (kWh)", UTC)[1]) == {100.0}


@pytest.mark.parametrize("header, option, refusal", [
    ("Usage (kWh)", "kW", r"column 'Usage \(kWh\)' says kWh, --value-unit says kW"),
    ("Usage,UNITS", "kW", r"column 'UNITS' says kWh, --value-unit says kW"),
    ("kW (kWh/4)", None, r"names several units \(kW, kWh\): give --value-unit")])
def test_a_unit_given_two_ways_that_disagree_is_refused(tmp_path, header, option, refusal):
    src = tmp_path / "usage.csv"
    unit_cell = ",kWh" if "UNITS" in header else ""
    src.write_text(f"timestamp,{header}\n2019-10-14 00:00:00,25{unit_cell}\n2019-10-14 00:15:00,26{unit_cell}\n")
    with pytest.raises(ReplayInputError, match=refusal):
        read_export(src, "timestamp", header.split(",")[0], UTC, value_unit=option)


def test_a_name_of_several_unit_words_takes_the_option_and_a_units_column_is_checked_against_the_name(tmp_path):
    src = tmp_path / "u.csv"
    src.write_text("timestamp,Bldg W kW\n2019-10-14 00:00:00,25\n2019-10-14 00:15:00,26\n")
    assert list(read_export(src, "timestamp", "Bldg W kW", UTC, value_unit="kW")[1]) == [25.0, 26.0]
    # rows marked kVARh under a column named in kWh were imported as kWh
    src.write_text("timestamp,Usage (kWh),UNITS\n2019-10-14 00:00:00,25,kVARh\n2019-10-14 00:15:00,26,kVARh\n")
    with pytest.raises(ReplayInputError, match=r"column 'UNITS' gives the unit\(s\) kVARh"):
        read_export(src, "timestamp", "Usage (kWh)", UTC)
    src.write_text("timestamp,Usage (kWh),UNITS\n2019-10-14 00:00:00,25,kW\n2019-10-14 00:15:00,26,kW\n")
    with pytest.raises(ReplayInputError, match=r"column 'UNITS' says kW, column 'Usage \(kWh\)' says kWh"):
        read_export(src, "timestamp", "Usage (kWh)", UTC)


@pytest.mark.parametrize("header", ["kW-h", "kW-hr", "Watt-hr", "kWhr", "KWHR", "kW·h"])
def test_energy_units_as_meters_and_utilities_spell_them(tmp_path, header):
    # read as power, or as the kW default without a word: 15-minute kWh 4 times low
    src = tmp_path / "u.csv"
    scale = 0.001 if header == "Watt-hr" else 1.0
    src.write_text(f"timestamp,{header}\n2019-10-14 00:00:00,{25 / scale:g}\n2019-10-14 00:15:00,{26 / scale:g}\n")
    assert list(read_export(src, "timestamp", header, UTC)[1]) == [100.0, 104.0]


def test_a_unit_column_of_something_else_is_not_taken_for_units(tmp_path):
    # a "Unit" of suite numbers beside "Demand (kW)" refused the whole file, even with --value-unit
    src = tmp_path / "u.csv"
    src.write_text("timestamp,Unit,Demand (kW)\n2019-10-14 00:00:00,101,25\n2019-10-14 00:15:00,102,26\n")
    assert list(read_export(src, "timestamp", "Demand (kW)", UTC)[1]) == [25.0, 26.0]


def test_start_times_a_second_or_two_off_the_interval_are_one_spacing(tmp_path):
    src = tmp_path / "s.csv"
    times = [dt.datetime(2019, 10, 14) + dt.timedelta(minutes=15 * i, seconds=(i % 3)) for i in range(200)]
    src.write_text("timestamp,kW\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},25\n" for t in times))
    t = read_export(src, "timestamp", "kW", UTC, stamped="start")[0]
    assert t[0] == pytest.approx(times[0].replace(tzinfo=dt.timezone.utc).timestamp() + 900, abs=2)


def test_watt_hours_and_a_power_cell_in_a_column_of_energy(tmp_path):
    src = tmp_path / "u.csv"
    src.write_text("timestamp,Watt_Hours\n2019-10-14 00:00:00,25000\n2019-10-14 00:15:00,26000\n")
    assert list(read_export(src, "timestamp", "Watt_Hours", UTC)[1]) == [100.0, 104.0]    # Wh per 15 min
    # "26 kW" in a kWh column was taken as 26 kWh: 104 kW
    src.write_text("timestamp,kWh\n2019-10-14 00:00:00,25\n2019-10-14 00:15:00,26 kW\n2019-10-14 00:30:00,27\n")
    t, v, _, skipped, notes, _ = read_export(src, "timestamp", "kWh", UTC)
    assert list(v) == [100.0, 108.0] and skipped == 1
    assert any("line 3: value '26 kW' is power, in a column of energy (kWh)" in n for n in notes), notes


def test_unit_words_in_a_column_name_are_read_bracketed_or_not(tmp_path):
    src = tmp_path / "w.csv"
    for header in ("Power (watts)", "Watts", "Power_W", "P [W]"):
        src.write_text(f"timestamp,{header}\n2019-10-14 00:00:00,25000\n2019-10-14 00:15:00,26000\n")
        assert list(read_export(src, "timestamp", header, UTC)[1]) == [25.0, 26.0], header
    src.write_text("timestamp,Wert\n2019-10-14 00:00:00,25\n2019-10-14 00:15:00,26\n")    # no unit: kW
    assert list(read_export(src, "timestamp", "Wert", UTC)[1]) == [25.0, 26.0]


def test_the_readme_example_for_a_european_export(tmp_path, capsys):
    times, kw = _turin()
    src, out = tmp_path / "export.csv", tmp_path / "predictions.csv"
    src.write_bytes(("Zähler;Hauptverteilung\n\nDatum;Wirkleistung [W]\n" + "".join(
        f"{t:%d.%m.%Y %H:%M};{_comma(round(v * 1000, 1))}\n" for t, v in zip(times, kw))).encode("cp1252"))
    rc = _replay(src, out, "--time-format", "%d.%m.%Y %H:%M", "--timezone", "Europe/Rome", "--encoding", "cp1252",
                 time_column="Datum", value_column="Wirkleistung [W]")
    assert rc == 0 and capsys.readouterr().err == (
        "forecast-replay: read export.csv: header on line 3, ';'-separated, decimal comma, values in W, "
        "converted to kW\n")
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(kw) and np.isclose(float(rows[0]["forecast_kw"]), kw[0])


def test_times_given_twice_with_other_values_and_times_the_clocks_skipped_are_said(tmp_path):
    # Both were read without a word: a concatenated export's clashing rows averaged, and 02:00-02:45 on the
    # spring-forward night (which never happened in Rome) read as 03:00-03:45 and averaged with the real ones.
    from forecaster.export_csv import read_export

    src = tmp_path / "in.csv"
    src.write_text("timestamp,kw\n2019-03-31 01:45,100\n2019-03-31 02:50,110\n2019-03-31 03:00,120\n"
                   "2019-03-31 03:15,130\n2019-03-31 03:15,990\n2019-03-31 03:30,140\n")
    times, values, _, _, notes, _ = read_export(src, "timestamp", "kw", ZoneInfo("Europe/Rome"))
    assert notes == ["1 row(s) at a time the clocks skipped in Europe/Rome (e.g. 2019-03-31 02:50, the clocks "
                     "going forward): read as the hour after",
                     "1 time(s) given again with another value (e.g. lines 5 and 6: 130 and 990 kW): their values "
                     "averaged"], notes
    clean = tmp_path / "clean.csv"
    clean.write_text("timestamp,kw\n2019-03-31 01:45,100\n2019-03-31 03:00,120\n2019-03-31 03:00,120\n")
    assert read_export(clean, "timestamp", "kw", ZoneInfo("Europe/Rome"))[4] == []    # repeated alike: nothing


def test_line_ends_of_every_kind_and_a_quoted_newline_read_with_their_line_numbers(tmp_path):
    # the reader goes line by line (a million rows no longer held): \r alone (an old Mac export), \r\n and \n in one
    # file, and a quoted note over two lines, still end where a spreadsheet ends them; a row is named by its last line
    src = tmp_path / "mixed.csv"
    src.write_bytes(b"# exported by hand\rtimestamp,kw,note\r\n2019-10-07 00:00,10,\"two\nlines\"\n"
                    b"2019-10-07 00:15,x,\r2019-10-07 00:30,12,\r\n\r\n2019-10-07 00:45,13,")
    t, v, lines, skipped, notes, reading = read_export(src, "timestamp", "kw", UTC)
    assert v.tolist() == [10.0, 12.0, 13.0] and lines.tolist() == [4, 6, 8] and skipped == 1
    assert notes == ["line 5: value 'x' is not a number; row skipped"] and reading is None

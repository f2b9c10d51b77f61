"""`edge-gateway forget-forecast`: the forecaster's tables emptied in a real storage.path file, the rest kept,
and never while something holds the gateway's BACnet port."""
import socket

from forecaster.core import DemandForecaster
from forecaster.store import ForecastStore
from gateway_process import write_config
from ven.cli import main
from ven.storage import Storage

T0 = 1_764_547_200.0   # 2025-12-01 00:00 UTC


def _filled(tmp_path, bacnet_port):
    db = tmp_path / "gateway.sqlite"
    cfg = tmp_path / "gateway.toml"
    write_config(cfg, bacnet_port=bacnet_port, http_port=9, storage=db, ven_name="ven-forget")
    store = ForecastStore(str(db))
    store.save_minutes(range(int(T0 // 60), int(T0 // 60) + 120), [100.0] * 120, [1] * 120)
    store.save_model(b"a model")
    fc = DemandForecaster()
    for k in range(120):
        fc.add_sample(T0 + 60 * k, 100.0)
    store.record_forecast(fc.predict(T0 + 7200))
    kept = Storage(db)
    kept.save_value("bacnet_commands:ADR-Opt-Out", '{"8": 1}')
    kept.close()
    return cfg, db


def test_it_says_what_it_would_delete_and_deletes_only_with_yes(tmp_path, free_udp_port, capsys):
    cfg, db = _filled(tmp_path, free_udp_port())

    assert main(["forget-forecast", "--config", str(cfg)]) == 1
    said = capsys.readouterr().out
    # minute T0 // 60 holds the readings of the minute before T0: named by its start, as /api/status does
    assert "120 minutes of history (2025-11-30 23:59 UTC to 2025-12-01 01:58 UTC), its fitted model and " \
           "1 issued forecast." in said and "Nothing deleted: run again with --yes" in said
    assert ForecastStore(str(db)).contents()["minutes"] == 120

    assert main(["forget-forecast", "--config", str(cfg), "--yes"]) == 0
    assert "deleted the forecaster's 120 minutes of history" in capsys.readouterr().out
    assert ForecastStore(str(db)).contents() == {"minutes": 0, "first": None, "last": None, "model": False,
                                                 "forecasts": 0}
    assert ForecastStore(str(db)).history(0)["forecasts"] == {}
    # once more, with nothing left: said so, not "run again with --yes"
    assert main(["forget-forecast", "--config", str(cfg)]) == 0
    assert "holds no forecaster history, model or forecasts: nothing to forget" in capsys.readouterr().out
    kept = Storage(db)
    try:
        assert kept.load_value("bacnet_commands:ADR-Opt-Out") == '{"8": 1}'
    finally:
        kept.close()


def test_it_refuses_while_the_gateways_bacnet_port_is_held(tmp_path, free_udp_port, capsys):
    port = free_udp_port()
    cfg, db = _filled(tmp_path, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", port))
        assert main(["forget-forecast", "--config", str(cfg), "--yes"]) == 1
    assert f"bacnet.address 127.0.0.1/8:{port} is in use: the gateway seems to run" in capsys.readouterr().out
    assert ForecastStore(str(db)).contents()["minutes"] == 120


def test_a_missing_file_is_not_created(tmp_path, free_udp_port, capsys):
    cfg = tmp_path / "gateway.toml"
    write_config(cfg, bacnet_port=free_udp_port(), http_port=9, storage=tmp_path / "none.sqlite", ven_name="v")
    assert main(["forget-forecast", "--config", str(cfg), "--yes"]) == 0
    assert "no such file, nothing to forget" in capsys.readouterr().out
    assert not (tmp_path / "none.sqlite").exists()


def test_a_directory_is_named_as_one_not_as_a_missing_file(tmp_path, free_udp_port, capsys):
    # "no such file, nothing to forget" and exit 0 told an operator with a wrong storage.path that all was done
    cfg = tmp_path / "gateway.toml"
    (tmp_path / "var").mkdir()
    write_config(cfg, bacnet_port=free_udp_port(), http_port=9, storage=tmp_path / "var", ven_name="v")
    assert main(["forget-forecast", "--config", str(cfg), "--yes"]) == 1
    assert f"storage.path {tmp_path / 'var'} is a directory, not the gateway's file: nothing deleted" in \
        capsys.readouterr().out


def test_the_range_it_names_is_the_minutes_the_readings_were_taken_in(tmp_path, free_udp_port, capsys):
    # Readings at 00:30:05-00:30:10 only: it said "1 minutes of history (... 00:31 UTC to ... 00:31 UTC)",
    # a time after the gateway had stopped; /api/status says 00:30 for the same minute.
    db = tmp_path / "gateway.sqlite"
    cfg = tmp_path / "gateway.toml"
    write_config(cfg, bacnet_port=free_udp_port(), http_port=9, storage=db, ven_name="ven-forget")
    fc = DemandForecaster()
    for s in range(5, 11):
        fc.add_sample(T0 + 1800 + s, 100.0)
    ForecastStore(str(db)).save_minutes(*fc.drain_dirty())
    assert main(["forget-forecast", "--config", str(cfg)]) == 1
    said = capsys.readouterr().out
    assert "forecaster's 1 minute of history (2025-12-01 00:30 UTC to 2025-12-01 00:30 UTC)" in said, said


def test_a_read_only_file_system_is_named(tmp_path, free_udp_port, capsys):
    # SQLite's "unable to open database file" alone, where the gateway's own line names the file system's reason
    from test_faults_storage import remount, tmpfs

    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        cfg, db = _filled(disk, free_udp_port())
        remount(disk, "ro")
        assert main(["forget-forecast", "--config", str(cfg), "--yes"]) == 1
        said = capsys.readouterr().out
    assert f"storage.path {db}: " in said and "(Read-only file system)" in said, said

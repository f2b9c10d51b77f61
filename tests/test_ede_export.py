"""`edge-gateway points --ede FILE`: the EDE file a BAS workstation imports says what the running gateway serves."""
from __future__ import annotations

import csv
import os
import subprocess

import pytest
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from bacnet_api.ede import COLUMNS
from bacnet_api.objects import float32
from bacnet_api.points import POINTS
from bacnet_peer import BacnetPeer, PeerError
from cli_run import run_cli
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

pytestmark = pytest.mark.timeout(180)   # a gateway process's start (START_S) and the CLI's

# BACnet's numbers for what the gateway serves (clause 21, BACnetObjectType and BACnetEngineeringUnits)
OBJECT_TYPES = {"2": "analogValue", "5": "binaryValue", "8": "device"}
UNITS = {"48": "kilowatts", "72": "minutes", "95": "noUnits"}


def _points(*args: str) -> subprocess.CompletedProcess:
    return run_cli(["points", *args], timeout=60)


def _parse(path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(header key -> value, object rows) of an EDE file, as an importer splits it: at every semicolon."""
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    assert lines[-1] == "" and all("\n" not in line and "\r" not in line for line in lines), "CRLF lines"
    lines = lines[:-1]
    assert lines[0].split(";")[0] == "# Engineering-Data-Exchange - B.I.G.-EU"
    # importers that count columns find all 16 on every line; a quoted field would shift one that splits
    assert [n for n, line in enumerate(lines) if len(line.split(";")) != len(COLUMNS)] == []
    assert list(csv.reader(lines, delimiter=";")) == [line.split(";") for line in lines]
    header = {cells[0]: cells[1] for cells in (line.split(";") for line in lines[1:6])}
    assert lines[6].split(";") == ["#mandatory"] + ["mandatory"] * 4 + ["optional"] * 11
    assert lines[7].split(";") == ["# keyname", "device obj.-instance", "object-name", "object-type",
                                   "object-instance", "description", "present-value-default", "min-present-value",
                                   "max-present-value", "settable", "supports COV", "hi-limit", "low-limit",
                                   "state-text-reference", "unit-code", "vendor-specific-address"]
    return header, [dict(zip(COLUMNS, line.split(";"))) for line in lines[8:]]


def _parse_state_texts(path) -> dict[str, tuple[str, str]]:
    """reference number -> (inactive text, active text) of a state-text file, as an importer reads it."""
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    assert lines[-1] == "" and all("\n" not in line and "\r" not in line for line in lines), "CRLF lines"
    cells = [line.split(";") for line in lines[:-1]]
    assert list(csv.reader(lines[:-1], delimiter=";")) == cells   # nothing quoted
    assert cells[:2] == [["#State Text Reference", "", ""],
                         ["#Reference Number", "Text 1 or Inactive-Text", "Text 2 or Active-Text"]]
    rows = [row for row in cells if not row[0].startswith("#")]
    assert all(len(row) == 3 and row[0].isdigit() for row in rows), rows
    texts = {row[0]: (row[1], row[2]) for row in rows}
    assert len(texts) == len(rows) and len(set(texts.values())) == len(rows), rows   # one row per pair
    return texts


async def _subscribes(peer: BacnetPeer, address: str, obj: str) -> bool:
    try:
        async with peer.app.change_of_value(Address(address), ObjectIdentifier(obj.replace(" ", ",")), 11, False,
                                            60):
            return True
    except BaseException as err:   # bacpypes3's Error PDUs derive from BaseException
        if "optional-functionality-not-supported" not in str(err):
            raise
        return False


async def test_the_ede_file_says_what_the_running_gateway_serves(tmp_path, free_udp_port, free_tcp_port,
                                                                  monkeypatch):
    bacnet_port, config = free_udp_port(), tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="ede-test", device_id=4100042, device_name="Bldg-7-Gateway")
    # a site's horizons, threshold window and bounds, the bounds as the service's environment gives them
    config.write_text(config.read_text() + "horizons_minutes = [30, 120]\nthreshold_days = 7\n")
    monkeypatch.setenv("EDGE_GATEWAY__BACNET__INPUT_MIN_KW", "-50")
    monkeypatch.setenv("EDGE_GATEWAY__BACNET__INPUT_MAX_KW", "999.9")

    ede = tmp_path / "Bldg-7_EDE.csv"
    res = _points("--config", str(config), "--ede", str(ede))
    assert res.returncode == 0, res.stderr
    state_texts = tmp_path / "Bldg-7_EDE_StateTexts.csv"
    # the device and each point: a point added is one more, without this line to change
    assert res.stdout == (f"{ede}: EDE file of device 4100042 'Bldg-7-Gateway', {len(POINTS) + 1} objects; "
                          f"state texts in {state_texts}\n")
    header, rows = _parse(ede)
    texts = _parse_state_texts(state_texts)
    assert sorted(texts) == sorted(r["state-text-reference"] for r in rows if r["state-text-reference"])
    assert header["PROJECT_NAME"] == "Bldg-7-Gateway" and header["VERSION_OF_LAYOUT"] == "2.3"
    assert header["AUTHOR_OF_LAST_CHANGE"].startswith("edge-gateway ")
    assert {r["device obj.-instance"] for r in rows} == {"4100042"}
    assert len({r["keyname"] for r in rows}) == len(rows)
    by_object = {f"{OBJECT_TYPES[r['object-type']]} {r['object-instance']}": r for r in rows}
    assert len(by_object) == len(rows)
    device = by_object.pop("device 4100042")
    assert (device["object-name"], device["settable"], device["supports COV"]) == ("Bldg-7-Gateway", "N", "N")

    gw = f"127.0.0.1:{bacnet_port}"
    with GatewayProcess(config, tmp_path / "gateway.log") as gateway:
        async with BacnetPeer(free_udp_port(), timeout=3.0) as peer:
            served = await eventually(lambda: peer.read(gw, "device 4100042", "objectList"), START_S,
                                      "the device answers")
            # every object a BAS programs against is in the file, and nothing the device does not serve
            assert sorted(by_object) == sorted(o for o in served if not o.startswith(("device", "networkPort")))
            assert await peer.read(gw, "device 4100042", "objectName") == device["object-name"]
            assert isinstance(await peer.read(gw, "device 4100042", "description"), PeerError)
            assert device["description"] == ""
            assert not await _subscribes(peer, gw, "device 4100042")

            for obj, row in by_object.items():
                props = ["objectName", "objectType", "description", "priorityArray"]
                got = await peer.read_multiple(gw, [(obj, props + (["units"] if "analog" in obj else []))])
                assert got[(obj, "objectName")] == row["object-name"], obj
                assert got[(obj, "objectType")] == OBJECT_TYPES[row["object-type"]], obj
                assert got[(obj, "description")] == row["description"], obj
                assert got.get((obj, "units")) == UNITS.get(row["unit-code"]), obj
                assert isinstance(got[(obj, "priorityArray")], list) == (row["settable"] == "Y"), obj
                assert await _subscribes(peer, gw, obj) == (row["supports COV"] == "Y"), obj
                assert (row["hi-limit"], row["low-limit"]) == ("", ""), obj
                # the texts the file gives a binary point are the ones its graphic gets from the device
                if obj.startswith("binaryValue"):
                    served = await peer.read_multiple(gw, [(obj, ["inactiveText", "activeText"])])
                    assert texts[row["state-text-reference"]] == (served[(obj, "inactiveText")],
                                                                  served[(obj, "activeText")]), obj
                else:
                    assert row["state-text-reference"] == "", obj

            # the configured horizons and window, as the running device describes them
            assert "ending 30 min ahead" in by_object["analogValue 5"]["description"]
            assert "ending 120 min ahead" in by_object["analogValue 2"]["description"]
            assert "over the last 7 days" in by_object["analogValue 8"]["description"]
            assert sorted(r["object-name"] for r in by_object.values() if r["settable"] == "Y") == [
                "ADR-Opt-Out", "bas-shed-power", "input-power-meter"]

            # the range the file gives input-power-meter is the one the device holds a BAS's command to
            meter = by_object["analogValue 1"]
            assert (meter["min-present-value"], meter["max-present-value"]) == ("-50", "999.9")
            assert (meter["present-value-default"], by_object["binaryValue 4"]["present-value-default"]) == ("0", "0")
            # no negative shed: its range starts at 0, whatever bacnet.input_min_kw
            shed = by_object["analogValue 10"]
            assert (shed["min-present-value"], shed["max-present-value"], shed["present-value-default"]) == (
                "0", "999.9", "0")
            assert sorted(r["object-name"] for r in by_object.values() if r["max-present-value"]) == [
                "bas-shed-power", "input-power-meter"]
            for obj, low in (("analogValue 1", -50.0), ("analogValue 10", 0.0)):
                for bound, beyond in ((999.9, 1000.0), (low, low - 0.01)):
                    assert await peer.write(gw, obj, "presentValue", bound, priority=8) is None
                    assert await peer.read(gw, obj, "presentValue") == float32(bound)
                    refused = await peer.write(gw, obj, "presentValue", beyond, priority=8)
                    assert isinstance(refused, PeerError) and refused.code == "valueOutOfRange", (obj, refused)
        assert gateway.stop() == 0, gateway.log()[-3000:]
    assert "Traceback" not in gateway.log()


def test_a_bad_output_path_is_a_clear_error(tmp_path):
    from pathlib import Path

    example = str(Path(__file__).resolve().parent.parent / "examples" / "gateway.toml")
    # "No such file or directory" alone, for a file the command is to make, read as if it had to exist already
    missing = tmp_path / "no-such-dir"
    for path, reason in ((missing / "x_EDE.csv", f"cannot write it: no directory {missing}"),
                         (tmp_path, "cannot write it: Is a directory")):
        res = _points("--config", example, "--ede", str(path))
        assert (res.returncode, res.stdout) == (2, "")
        assert res.stderr == f"points: --ede {path}: {reason}\n"   # one line, no traceback
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_written_beside_the_target_under_a_name_of_its_own(tmp_path):
    # it went through a fixed ".NAME.partial": a link planted there in a shared directory (an installer writing the
    # EDE file to /tmp as root) had the write follow it to whatever the link named
    from bacnet_api.ede import write_ede

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / ".gateway_EDE.csv.partial").symlink_to(victim)
    old = os.umask(0o022)
    try:
        write_ede(tmp_path / "gateway_EDE.csv", "# EDE\n")
    finally:
        os.umask(old)
    assert victim.read_text() == "untouched"
    assert (tmp_path / "gateway_EDE.csv").read_text() == "# EDE\n"
    assert (tmp_path / "gateway_EDE.csv").stat().st_mode & 0o777 == 0o644   # as the umask says, for the BAS tool
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gateway_EDE.csv.partial", "gateway_EDE.csv", "victim"]

"""TLS with client certificates and VTN fingerprint pinning against a real openleadr VTN."""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import subprocess

import pytest
from waiting import eventually as until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree
from openleadr.utils import certificate_fingerprint

from cli_run import run_cli
from ven.cert_expiry import read_client_cert
from ven.config import OpenadrConfig
from ven.config_checks import tls_file_problems
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.telemetry import TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn




def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key, passphrase=None):
    enc = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
           else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))


def _issue(ca_key, ca_cert, cn, path, key_path, passphrase=None, not_after=None):
    """A certificate and its key, valid from an hour ago (or a day before `not_after`) to `not_after` (a year, as
    a site's: one within cert_expiry.WARN_DAYS of its end is warned of, in the log and by check-config)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = not_after or now + dt.timedelta(days=365)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(min(now - dt.timedelta(hours=1), not_after - dt.timedelta(days=1)))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    _write_key(key_path, key, passphrase)
    return certificate_fingerprint(pem)


def _ca(tmp_path):
    """A CA's key and certificate, written to tmp_path/ca.pem."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_key, ca


@pytest.fixture
def pki(tmp_path):
    ca_key, ca = _ca(tmp_path)
    fp = {}
    fp["vtn"] = _issue(ca_key, ca, "vtn", tmp_path / "vtn.pem", tmp_path / "vtn.key")
    fp["ven"] = _issue(ca_key, ca, "ven", tmp_path / "ven.pem", tmp_path / "ven.key", passphrase="s3cret")
    fp["other"] = _issue(ca_key, ca, "other", tmp_path / "other.pem", tmp_path / "other.key")
    return tmp_path, fp


def ven_tls(tmp_path) -> dict:
    """The VEN's TLS keys of the `pki` fixture's files."""
    return dict(cert=str(tmp_path / "ven.pem"), key=str(tmp_path / "ven.key"), passphrase="s3cret",
                ca_file=str(tmp_path / "ca.pem"))


async def _run_gateway(tmp_path, url, vtn_fingerprint):
    return await run_ven(tmp_path, vtn_url=url, vtn_fingerprint=vtn_fingerprint, **ven_tls(tmp_path))


async def run_ven(tmp_path, **openadr):
    """A VtnClient with its storage in tmp_path, retrying and reporting quickly; and its close()."""
    storage = Storage(tmp_path / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: None)
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    cfg = OpenadrConfig(retry_min_seconds=0.2, retry_max_seconds=1.0, telemetry_seconds=1.0, **openadr)
    client = VtnClient(cfg, schedule, queue)
    await schedule.start()
    await client.start()

    async def close():
        await client.stop()
        await schedule.stop()
        queue.close()
        storage.close()
    return client, close


@pytest.mark.parametrize("typed", [str, str.lower], ids=["as-printed", "lower-case"])
async def test_right_fingerprint_registers_and_reports_over_tls(pki, free_tcp_port, typed):
    d, fp = pki
    server = DemoVtn(free_tcp_port(), poll_seconds=1, cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                     ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
    assert server.url.startswith("https://")
    async with server:
        client, close = await _run_gateway(d, server.url, typed(fp["vtn"]))
        try:
            await until(lambda: client.connected, 15, "TLS registration")
            assert server.vens[client.ven_id]["fingerprint"] == fp["ven"]
            # oadrXmlSignature: this VEN signs its messages with its certificate (openleadr said false)
            assert [r["xml_signature"] for r in server.registration_requests] == [True]
            client.record_sample(dt.datetime.now(dt.timezone.utc), 12.34)
            await until(lambda: [r[4] for r in server.reports] == [12.34], 10, "signed report")
        finally:
            await close()


async def test_wrong_fingerprint_is_refused_logged_and_retried(pki, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    d, fp = pki
    server = DemoVtn(free_tcp_port(), poll_seconds=1, cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                     ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
    async with server:
        client, close = await _run_gateway(d, server.url, fp["other"])
        try:
            await until(lambda: client.registration_failures >= 3, 15, "repeated refusals")
            assert not client.connected and client.ven_id is None
            assert "fingerprint" in client.status()["last_error"]
            refusals = [r for r in caplog.records if "fingerprint does not match" in r.getMessage()]
            assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
            assert all(not t.done() for t in client._tasks), "the client keeps retrying"
        finally:
            await close()


def test_check_config_opens_the_tls_files(pki):
    d, _ = pki

    def check(**keys):
        conf = d / "gw.toml"
        conf.write_text("[openadr]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items()))
        return run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL)

    good = dict(cert=d / "ven.pem", key=d / "ven.key", passphrase="s3cret", ca_file=d / "ca.pem")
    assert check(**good).returncode == 0
    for bad, words in ((dict(good, passphrase="wrong"), "openadr.passphrase: does not decrypt openadr.key"),
                       (dict(good, passphrase=""), "openadr.passphrase: openadr.key"),  # never a prompt
                       (dict(good, key=d / "other.key", passphrase=""), "do not belong together"),
                       (dict(good, cert=d / "missing.pem"), f"openadr.cert: {d / 'missing.pem'}: No such file"),
                       (dict(good, key=d / "missing.key"), f"openadr.key: {d / 'missing.key'}: No such file"),
                       (dict(good, ca_file=d / "ven.key"), "openadr.ca_file")):
        res = check(**bad)
        assert res.returncode == 78 and words in res.stderr, (bad, res.stderr)
        assert res.stderr.startswith("configuration error: ") and "Traceback" not in res.stderr


@pytest.mark.parametrize("with_client_cert", [False, True], ids=["ca_file-alone", "ca_file-and-cert"])
async def test_ca_file_verifies_a_private_ca_vtn_with_or_without_a_client_certificate(pki, free_tcp_port,
                                                                                        with_client_cert):
    # openleadr read ca_file only beside a client certificate: a VTN on a private CA was refused
    import ssl

    from aiohttp import web

    from ven.vtn_transport import VenClient

    d, _ = pki
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(d / "vtn.pem", d / "vtn.key")
    runner = web.AppRunner(web.Application())  # answers 404: enough to show the handshake passed
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    tls = dict(cert=str(d / "ven.pem"), key=str(d / "ven.key"), passphrase="s3cret") if with_client_cert else {}
    try:
        for ca_file, expected in ((str(d / "ca.pem"), "HTTP 404"), (None, "TLS certificate of the VTN rejected")):
            client = VenClient(ven_name="t", vtn_url=f"https://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
                               ca_file=ca_file, show_fingerprint=False, disable_signature=True, **tls)
            try:
                await client._perform_request("EiRegisterParty", b"<x/>")
                assert client.last_error.startswith(expected), client.last_error
            finally:
                await client.client_session.close()
    finally:
        await runner.cleanup()


def test_check_config_says_when_the_ven_certificate_has_expired(pki):
    d, _ = pki
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    old = (x509.CertificateBuilder().subject_name(_name("ven")).issuer_name(_name("ven")).public_key(key.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=400))
           .not_valid_after(now - dt.timedelta(days=35)).sign(key, hashes.SHA256()))
    (d / "old.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "old.key", key)
    conf = d / "gw.toml"
    conf.write_text(f'[openadr]\ncert = "{d / "old.pem"}"\nkey = "{d / "old.key"}"\nca_file = "{d / "ca.pem"}"\n')
    res = run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 78 and f"openadr.cert: {d / 'old.pem'}: expired on " in res.stderr, res.stderr


async def test_a_passphrase_left_for_a_key_reissued_plain_is_not_handed_to_the_signer(pki, tmp_path):
    d, _ = pki
    cfg = OpenadrConfig(cert=str(d / "other.pem"), key=str(d / "other.key"), passphrase="left-over",
                        ca_file=str(d / "ca.pem"))
    assert tls_file_problems(cfg) == []
    storage = Storage(tmp_path / "gw.sqlite")
    client = VtnClient(cfg, EventSchedule(storage, lambda st: None), TelemetryQueue(tmp_path / "gw.sqlite"))
    client._new_client()  # openleadr's signer raised TypeError here on every registration
    storage.close()


def test_the_ven_fingerprint_is_logged_when_the_certificate_appears_or_changes(pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    d, fp = pki
    cert = tmp_path / "mounted.pem"
    cfg = OpenadrConfig(cert=str(cert), key=str(d / "other.key"), ca_file=str(d / "ca.pem"))
    storage = Storage(tmp_path / "gw.sqlite")
    client = VtnClient(cfg, EventSchedule(storage, lambda st: None), TelemetryQueue(tmp_path / "gw.sqlite"))
    client._note_fingerprint()                       # not mounted yet: one error
    client._note_fingerprint()
    cert.write_bytes((d / "other.pem").read_bytes())  # mounted after the start
    client._note_fingerprint()
    client._note_fingerprint()
    cert.write_bytes((d / "ven.pem").read_bytes())    # rotated
    client._note_fingerprint()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "cannot be read" in m]) == 1
    # which certificate and until when: the expiry was said only within its last 21 days, and a rotated file only by
    # a fingerprint, which the operator could not match to the file it came from
    ends = {name: read_client_cert(str(d / f"{name}.pem")).not_after.strftime("%Y-%m-%d %H:%M UTC")
             for name in ("other", "ven")}
    assert [m for m in said if m.startswith("VEN certificate")] == [
        f"VEN certificate openadr.cert {cert}: fingerprint {fp[name]} (give it to the VTN operator), subject CN={name}, "
        f"valid until {ends[name]}" for name in ("other", "ven")]
    storage.close()


def test_openleadr_errors_repeated_at_every_retry_are_one_warning():
    import io

    from ven.logs import setup_logging

    out = io.StringIO()
    setup_logging("INFO", stream=out)
    try:
        for _ in range(5):
            logging.getLogger("openleadr").error("No registration ID received from the VTN, aborting registration.")
    finally:
        setup_logging("WARNING")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and " WARNING No registration ID received" in lines[0], lines


async def test_tls_file_errors_name_the_environment_variable_in_check_config_and_status(pki, tmp_path, caplog):
    import os

    from ven.config_load import load_config

    d, _ = pki
    conf = d / "gw.toml"
    conf.write_text(f'[openadr]\ncert = "{d / "ven.pem"}"\nkey = "{d / "ven.key"}"\nca_file = "{d / "ca.pem"}"\n')
    env = {"EDGE_GATEWAY__OPENADR__PASSPHRASE": "wrong", "EDGE_GATEWAY__OPENADR__KEY": str(d / "ven.key")}
    res = run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **env})
    assert res.returncode == 78, res.stderr
    assert res.stderr == ("configuration error: openadr.passphrase (from EDGE_GATEWAY__OPENADR__PASSPHRASE): does not "
                          f"decrypt openadr.key (from EDGE_GATEWAY__OPENADR__KEY) {d / 'ven.key'} (or the key is not "
                          "a PEM private key)\n")

    # `run` says the same at each registration attempt, in /api/status's vtn.last_error
    missing = d / "mounted-later.pem"
    cfg = load_config(conf, environ={"EDGE_GATEWAY__OPENADR__CERT": str(missing),
                                     "EDGE_GATEWAY__OPENADR__PASSPHRASE": "s3cret"}).openadr
    storage = Storage(tmp_path / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: None)
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    client = VtnClient(cfg, schedule, queue)
    await client.start()
    try:
        await until(lambda: client.registration_failures >= 1, 5, "a failed registration")
        assert client.status()["last_error"] == (
            f"TLS files: openadr.cert (from EDGE_GATEWAY__OPENADR__CERT): {missing}: No such file or directory")
        assert [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()] == [
            f"openadr.cert (from EDGE_GATEWAY__OPENADR__CERT) {missing} cannot be read ([Errno 2] No such file or "
            f"directory: '{missing}'); the VEN cannot register until it is fixed"]
    finally:
        await client.stop()
        queue.close()
        storage.close()


async def test_the_vtn_signature_is_checked_off_the_event_loop(pki, free_tcp_port, monkeypatch):
    # signxml takes 0.1 s for a signed day-ahead listing of 200 events (bench: 0.2 s for 1440 intervals, about
    # 1 s for 200 events of 30), all of it a stall of the BACnet device and the schedule's timer when on the loop
    import threading

    from signxml import XMLVerifier
    checked = []        # (message type, checked on the event loop's thread)
    real = XMLVerifier.verify

    def verify(self, data, *args, **kwargs):
        signed = data.find("{http://openadr.org/oadr-2.0b/2012/07}oadrSignedObject")
        checked.append((etree.QName(signed[0]).localname, threading.current_thread() is threading.main_thread()))
        return real(self, data, *args, **kwargs)
    monkeypatch.setattr(XMLVerifier, "verify", verify)
    d, fp = pki
    server = DemoVtn(free_tcp_port(), poll_seconds=1, cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                     ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
    async with server:
        events = [server.add_event([1], dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1 + i), 60)
                  for i in range(3)]
        client, close = await _run_gateway(d, server.url, fp["vtn"])
        try:
            await until(lambda: all(server.opts_for(e) == ["optIn"] for e in events), 15, "the events answered")
        finally:
            await close()
    on_loop = {kind for kind, main in checked if main}
    assert "oadrDistributeEvent" in {kind for kind, main in checked if not main}
    assert on_loop <= {"oadrQueryRegistration", "oadrCreatePartyRegistration", "oadrRegisterReport", "oadrPoll",
                       "oadrRequestEvent", "oadrCreatedEvent", "oadrCreatedReport", "oadrUpdateReport"}, \
        "only the VTN's check of the VEN's messages, which is openleadr's own"


def test_a_vtn_message_altered_after_signing_or_signed_by_another_is_refused(pki):
    from openleadr.messaging import create_message, validate_xml_schema
    from openleadr.errors import FingerprintMismatch
    from signxml.exceptions import InvalidSignature
    from ven.vtn_transport import verify_signature

    d, fp = pki
    message = create_message("oadrResponse", cert=(d / "vtn.pem").read_bytes(), key=(d / "vtn.key").read_bytes(),
                             response={"response_code": 200, "response_description": "OK", "request_id": "r1"},
                             ven_id="ven1").encode()
    verify_signature(validate_xml_schema(message), fp["vtn"])
    with pytest.raises(InvalidSignature):
        verify_signature(validate_xml_schema(message.replace(b"<ei:venID>ven1<", b"<ei:venID>ven2<")), fp["vtn"])
    with pytest.raises(FingerprintMismatch):
        verify_signature(validate_xml_schema(message), fp["other"])


async def test_an_unsigned_vtn_answer_is_refused_saying_so_when_vtn_fingerprint_is_set(pki, free_tcp_port):
    # the check openadr.vtn_fingerprint turns on, over http too: an answer nobody signed (an impostor on a plain-http
    # path, or a VTN that does not sign) is refused, and the reason said was an AttributeError from openleadr
    d, fp = pki
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:     # no certificate: signs nothing
        client, close = await _run_gateway(d, server.url, fp["vtn"])
        try:
            await until(lambda: client.registration_failures >= 1, 10, "a refused registration")
            assert client.status()["last_error"] == ("VTN message is not signed, while openadr.vtn_fingerprint asks "
                                                     "for the VTN's signature on every message")
            assert not client.connected and server.registrations == 0
        finally:
            await close()


async def test_a_vtn_whose_clock_is_a_minute_behind_is_registered_with_and_its_events_followed(pki, free_tcp_port,
                                                                                              monkeypatch):
    # Each signed message carries the time it was signed (ReplayProtect). openleadr refuses one signed more than 5 s
    # ago by the reader's clock: a VTN (or this box) a few seconds off, which chrony or timesyncd alone allows, left
    # the gateway unable to register at all ("VTN message could not be read: ... signed too long ago").
    import threading

    from openleadr import messaging
    from openleadr.service.vtn_service import VTNService

    vtn_signing = threading.local()
    real_replay_protect = messaging._create_replay_protect

    def replay_protect():
        element = real_replay_protect()
        if getattr(vtn_signing, "on", False):
            stamp = element[0]
            stamp.text = (dt.datetime.fromisoformat(stamp.text.replace("Z", "+00:00")) - dt.timedelta(seconds=60)
                          ).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return element
    monkeypatch.setattr(messaging, "_create_replay_protect", replay_protect)
    d, fp = pki
    server = DemoVtn(free_tcp_port(), poll_seconds=1, cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                     ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
    real_create = VTNService._create_message

    def create_message_behind(*args, **kwargs):     # the VTN's messages only: signed by its clock, 60 s behind
        vtn_signing.on = True
        try:
            return real_create(*args, **kwargs)
        finally:
            vtn_signing.on = False
    monkeypatch.setattr(VTNService, "_create_message", staticmethod(create_message_behind))
    async with server:
        eid = server.add_event([2], dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), 60)
        client, close = await _run_gateway(d, server.url, fp["vtn"])
        try:
            await until(lambda: client.connected, 15, "registration with the VTN whose clock is behind")
            await until(lambda: server.opts_for(eid) == ["optIn"], 10, "its event followed and answered")
        finally:
            await close()


def test_a_vtn_message_signed_too_long_ago_or_seen_before_is_refused(pki, monkeypatch):
    from openleadr import messaging
    from openleadr.messaging import create_message, validate_xml_schema
    from ven import vtn_transport
    from ven.vtn_transport import REPLAY_WINDOW, _Replayed, verify_replay_protect

    d, fp = pki

    def signed(ago: dt.timedelta) -> bytes:
        real = messaging._create_replay_protect

        def replay_protect():
            element = real()
            element[0].text = (dt.datetime.now(dt.timezone.utc) - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return element
        monkeypatch.setattr(messaging, "_create_replay_protect", replay_protect)
        try:
            return create_message("oadrResponse", cert=(d / "vtn.pem").read_bytes(), key=(d / "vtn.key").read_bytes(),
                                  response={"response_code": 200, "response_description": "OK", "request_id": "r1"},
                                  ven_id="ven1").encode()
        finally:
            monkeypatch.setattr(messaging, "_create_replay_protect", real)
    monkeypatch.setattr(vtn_transport, "_nonces", {})
    late = validate_xml_schema(signed(REPLAY_WINDOW - dt.timedelta(minutes=1)))
    verify_replay_protect(late)                     # a VTN clock 14 min behind
    with pytest.raises(_Replayed, match="seen before"):
        verify_replay_protect(late)                 # the same message again
    with pytest.raises(_Replayed, match="min before this box's clock"):
        verify_replay_protect(validate_xml_schema(signed(REPLAY_WINDOW + dt.timedelta(minutes=1))))

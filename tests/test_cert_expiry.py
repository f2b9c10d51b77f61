"""openadr.cert's expiry said weeks ahead: a VEN certificate that runs out silently cuts the building off the
VTN's events, and the operator heard it from the utility. The log (one WARNING within WARN_DAYS, again at most daily,
one ERROR once expired, one INFO when renewed), /api/status, /metrics and check-config, with certificates made here."""
from __future__ import annotations

import datetime as dt
import logging
import math
import subprocess
import time

import pytest
from cryptography import x509
from openleadr.utils import certificate_fingerprint

from cli_run import run_cli
from test_tls import _ca, _issue
from ven.cert_expiry import WARN_DAYS, CertWatch, read_client_cert
from ven.config import OpenadrConfig
from ven.config_load import parse_config
from waiting import eventually

DAY = 86400.0


@pytest.fixture
def issue(tmp_path):
    """issue(days): openadr.cert and key files in tmp_path expiring `days` from now, from one CA (tmp_path/ca.pem)."""
    ca = _ca(tmp_path)

    def issue(days: float, cn: str = "ven-site-17") -> tuple[str, str]:
        not_after = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)).replace(microsecond=0)
        _issue(*ca, cn, tmp_path / "ven.pem", tmp_path / "ven.key", not_after=not_after)
        return str(tmp_path / "ven.pem"), str(tmp_path / "ven.key")
    return issue


def _said(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ven.cert_expiry"]


def test_the_log_warns_within_the_window_at_most_daily_errs_once_expired_and_says_the_renewal(issue, caplog):
    caplog.set_level(logging.INFO, logger="ven.cert_expiry")
    cert, key = issue(400)
    watch = CertWatch(OpenadrConfig(cert=cert, key=key), every_s=0)
    now, looks = time.time(), 0

    def look(later_s: float = 0.0) -> None:     # `later_s` on both clocks
        nonlocal looks
        looks += 1
        watch.check(1000.0 + later_s + looks, now + later_s)

    look()
    assert _said(caplog) == []          # a year to go: quiet
    far = read_client_cert(cert).not_after
    assert watch.metric_value() == far.timestamp()
    assert watch.status() == {"file": cert, "not_after": far.isoformat(), "subject": "CN=ven-site-17",
                              "warn_days": WARN_DAYS, "warning": None}

    issue(10)                 # the file a site has, ten days before its end
    ends = read_client_cert(cert).not_after
    for hours in (0, 1, 23):
        look(hours * 3600)
    assert _said(caplog) == [(logging.WARNING, f"openadr.cert {cert} expires on {ends:%Y-%m-%d %H:%M} UTC, in 10 days "
                              "(subject CN=ven-site-17): renew it before then, or the VTN refuses the gateway (no "
                              "demand-response events, telemetry waits in the queue); put the new certificate and key "
                              "in place of these files: the VEN reads them at its next registration, no restart "
                              "needed")]
    assert watch.status()["warning"] == "expiring" and watch.metric_value() == ends.timestamp()
    look(DAY + 60)                      # a day later, still not renewed: said again, once
    look(DAY + 120)
    assert [level for level, _ in _said(caplog)] == [logging.WARNING] * 2
    assert "in 9 days" in _said(caplog)[1][1]

    for later in (10 * DAY + 60, 10 * DAY + 120, 12 * DAY):     # expired: one ERROR, not one per look or per day
        look(later)
    assert [level for level, _ in _said(caplog)] == [logging.WARNING] * 2 + [logging.ERROR]
    assert _said(caplog)[2][1].startswith(f"openadr.cert {cert} expired on {ends:%Y-%m-%d %H:%M} UTC "
                                          "(subject CN=ven-site-17): the VTN refuses the gateway")
    assert watch.status()["warning"] == "expired"

    issue(730, cn="ven-site-17-2028")     # renewed on disk: one INFO, with what the VTN operator enrols
    look(12 * DAY + 60)
    look(12 * DAY + 120)
    renewed = read_client_cert(cert)
    assert _said(caplog)[3:] == [(logging.INFO, f"openadr.cert {cert} renewed: valid until "
                                  f"{renewed.not_after:%Y-%m-%d %H:%M} UTC (subject CN=ven-site-17-2028, fingerprint "
                                  f"{certificate_fingerprint(open(cert, 'rb').read())}, for the VTN operator); the VEN "
                                  "presents it from its next registration")]
    assert watch.status()["warning"] is None and watch.metric_value() == renewed.not_after.timestamp()


def test_a_renewal_that_is_itself_within_the_window_is_news_and_a_file_that_cannot_be_read_is_quiet(issue, caplog):
    caplog.set_level(logging.INFO, logger="ven.cert_expiry")
    cert, key = issue(5)
    watch = CertWatch(OpenadrConfig(cert=cert, key=key), every_s=0)
    watch.check(1, time.time())
    issue(20)                 # another certificate, also ending within the window: renewed, its fingerprint and date
    watch.check(2, time.time())
    assert [level for level, _ in _said(caplog)] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert " renewed: valid until " in _said(caplog)[1][1] and "fingerprint " in _said(caplog)[1][1]
    assert [m.split(", in ")[1][:7] for _, m in _said(caplog)[::2]] == ["5 days ", "20 days"]

    open(cert, "w").write("half-written")    # a renewal caught mid-copy: the VEN's lines say what is wrong
    watch.check(3, time.time())
    assert len(_said(caplog)) == 3
    assert watch.status()["not_after"] is None and math.isnan(watch.metric_value())

    issue(-1)                 # expired; a CA that issues 14-day certificates puts the next in its place
    watch.check(4, time.time())
    issue(14)
    watch.check(5, time.time())
    assert [level for level, _ in _said(caplog)[3:]] == [logging.ERROR, logging.INFO, logging.WARNING], _said(caplog)
    assert " renewed: valid until " in _said(caplog)[4][1] and ", in 14 days" in _said(caplog)[5][1]
    watch.check(6, time.time())     # and that is all, until a day has passed
    assert len(_said(caplog)) == 6 and watch.status()["warning"] == "expiring"

    none = CertWatch(OpenadrConfig(), every_s=0)    # plain http, or no certificate yet
    none.check(1, time.time())
    assert none.status() is None and math.isnan(none.metric_value())


def test_a_clock_put_back_is_no_renewal(issue, caplog):
    # a box whose clock ran 20 days ahead warned of its certificate; NTP put the clock right and the log said
    # "renewed ... for the VTN operator", naming the same file and date
    caplog.set_level(logging.INFO, logger="ven.cert_expiry")
    cert, key = issue(30)
    watch = CertWatch(OpenadrConfig(cert=cert, key=key), every_s=0)
    watch.check(1, time.time() + 20 * DAY)
    watch.check(2, time.time())
    assert [level for level, _ in _said(caplog)] == [logging.WARNING, logging.INFO]
    assert "renewed" not in _said(caplog)[1][1] and _said(caplog)[1][1].endswith("no longer expiring")
    assert watch.status()["warning"] is None


def _of_version(path: str, version: int) -> None:
    """Rewrite the PEM certificate at `path` to claim another X.509 version (its signature no longer matters)."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(x509.load_pem_x509_certificate(open(path, "rb").read()).public_bytes(Encoding.DER))
    at = der.index(bytes([0xA0, 0x03, 0x02, 0x01, 0x02]))     # [0] EXPLICIT INTEGER 2: v3
    der[at + 4] = version
    open(path, "wb").write(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) +
                           b"-----END CERTIFICATE-----\n")


def test_a_certificate_of_an_unknown_version_is_a_file_that_cannot_be_read(issue, tmp_path, caplog):
    # cryptography raises InvalidVersion, not ValueError, for it: the gateway's start read it and stopped there
    caplog.set_level(logging.INFO, logger="ven.cert_expiry")
    cert, key = issue(10)
    _of_version(cert, 5)
    watch = CertWatch(OpenadrConfig(cert=cert, key=key), every_s=0)
    watch.check(1, time.time())
    assert _said(caplog) == [] and watch.status()["not_after"] is None and math.isnan(watch.metric_value())

    res = _check_config(tmp_path, cert, key)     # its own line, not a traceback
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert f"openadr.cert: {cert}: not a PEM certificate" in res.stdout + res.stderr, (res.stdout, res.stderr)


def test_the_certificate_is_read_every_few_minutes_not_at_every_call(issue):
    cert, key = issue(400)
    watch = CertWatch(OpenadrConfig(cert=cert, key=key), every_s=300)
    watch.check(1000.0, time.time())
    first = watch.last
    issue(10)
    watch.check(1299.0, time.time())
    assert watch.last == first
    watch.check(1300.0, time.time())
    assert watch.last != first and watch.status()["warning"] == "expiring"


def _check_config(tmp_path, cert, key):
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[openadr]\ncert = "{cert}"\nkey = "{key}"\nca_file = "{tmp_path / "ca.pem"}"\n'
                    f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n')
    return run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL)


def test_check_config_warns_of_a_certificate_expiring_within_the_window(issue, tmp_path):
    cert, key = issue(6)
    res = _check_config(tmp_path, cert, key)
    assert res.returncode == 0, res.stderr      # a warning: the certificate still works
    ends = read_client_cert(cert).not_after
    assert (f"warning: openadr.cert {cert} expires on {ends:%Y-%m-%d %H:%M} UTC, in 6 days (subject CN=ven-site-17): "
            "renew it before then") in res.stdout, res.stdout

    cert, key = issue(WARN_DAYS + 2)
    res = _check_config(tmp_path, cert, key)
    assert res.returncode == 0 and "openadr.cert" not in res.stdout, res.stdout


@pytest.mark.timeout(60)
async def test_a_running_gateway_warns_once_shows_it_in_status_and_metrics_and_sees_the_renewal(
        issue, tmp_path, free_udp_port, free_tcp_port, caplog):
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from ven.app import Gateway

    caplog.set_level(logging.DEBUG, logger="ven")
    cert, key = issue(12)
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500017},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},   # nobody there
        # nobody there either: the registrations after the certificate expired say so at each attempt
        "openadr": {"vtn_url": f"https://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b", "cert": cert, "key": key,
                    "ca_file": str(tmp_path / "ca.pem"), "retry_min_seconds": 0.1, "retry_max_seconds": 0.2},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{free_tcp_port()}"},
        "forecaster": {"cycle_seconds": 0.2},
    }, "test", environ={})
    reads = []
    watch = CertWatch(cfg.openadr, every_s=0)       # read at every look
    real_check = watch.check
    watch.check = lambda mono, now: (reads.append(mono), real_check(mono, now))
    gateway = Gateway(cfg, cert_watch=watch)
    await gateway.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def get(path):
                async with http.get(f"{gateway.http.url}{path}") as r:
                    return r.status, (await r.json() if path.startswith("/api") else await r.text())

            async def metric():
                _, text = await get("/metrics")
                return {s.name: s.value for f in text_string_to_metric_families(text)
                        for s in f.samples}["edge_gateway_vtn_client_cert_expiry_timestamp_seconds"]

            ends = read_client_cert(cert).not_after
            await eventually(lambda: len(reads) >= 5, 10, "the certificate read at several cycles")
            assert [level for level, _ in _said(caplog)] == [logging.WARNING]
            assert f"expires on {ends:%Y-%m-%d %H:%M} UTC" in _said(caplog)[0][1]
            _, status = await get("/api/status")
            assert status["vtn"]["client_cert"] == {"file": cert, "not_after": ends.isoformat(),
                                                    "subject": "CN=ven-site-17", "warn_days": WARN_DAYS,
                                                    "warning": "expiring"}
            assert await metric() == ends.timestamp()
            code, health = await get("/healthz")
            assert code == 200 and "cert" not in health, health     # a warning: the gateway does its job

            issue(-1)         # past its date (the clock moved on, as far as the gateway can tell)
            await eventually(lambda: any(level == logging.ERROR for level, _ in _said(caplog)), 10, "the ERROR")
            attempts = gateway.vtn.registration_failures
            await eventually(lambda: gateway.vtn.registration_failures >= attempts + 5, 15, "registrations failing")
            expired = [r for r in caplog.records if "expired on" in r.getMessage() and r.levelno >= logging.INFO]
            # the watch's ERROR and the VTN fault's one line for its new cause, in either order: not one per attempt
            assert sorted((r.name, r.levelno) for r in expired) == [("ven.cert_expiry", logging.ERROR),
                                                                    ("ven.vtn", logging.WARNING)], expired
            assert "TLS files: openadr.cert" in (await get("/api/status"))[1]["vtn"]["last_error"]
            # a stop now would end neither line: its own line names the ERROR in force, as the other faults'
            assert "openadr.cert expired" in gateway._open_faults()

            issue(365)        # renewed in place, no restart
            await eventually(lambda: _said(caplog)[-1][0] == logging.INFO, 10, "the renewal said")
            renewed = read_client_cert(cert).not_after
            _, status = await get("/api/status")
            assert (status["vtn"]["client_cert"]["warning"], status["vtn"]["client_cert"]["not_after"]) == (
                None, renewed.isoformat())
            assert await metric() == renewed.timestamp()

            async def registers_with_it():     # the next registration reads the new files: only the VTN is missing
                return "TLS files" not in ((await get("/api/status"))[1]["vtn"]["last_error"] or "")
            await eventually(registers_with_it, 10, "the renewed certificate taken by a registration")
            assert [level for level, _ in _said(caplog)] == [logging.WARNING, logging.ERROR, logging.INFO]
            assert not [f for f in gateway._open_faults() if "openadr.cert" in f]
    finally:
        await gateway.stop()

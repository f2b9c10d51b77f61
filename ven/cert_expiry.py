"""When the VEN's client certificate (openadr.cert) runs out, said weeks before it does.

A VTN drops the handshake of an expired client certificate: the building stops receiving demand-response events
and telemetry queues, and the operator hears it from the utility. Certificates are issued for a year or two, so
nobody remembers the date. The gateway reads the file's notAfter at start and every few minutes (a renewed file is
seen without a restart; the VEN itself reads the files at each registration) and says it: one WARNING once it
expires within WARN_DAYS, again at most once a day while that lasts, one ERROR once it has expired, one INFO when a
renewed certificate ends either. The same figures go to /api/status (vtn.client_cert), the metric
edge_gateway_vtn_client_cert_expiry_timestamp_seconds and check-config's warnings.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bacnet_api.settle import span

if TYPE_CHECKING:   # ven.config imports config_checks, which imports this module
    from .config import OpenadrConfig

log = logging.getLogger(__name__)

# A renewal goes through the utility or its certificate authority (a CSR, an order, issuance) and the VTN operator
# must enrol the new fingerprint: a week or two of office days. Three weeks leaves room for that and a holiday.
WARN_DAYS = 21
CHECK_EVERY_S = 300.0   # reading a PEM is cheap; a renewal shows on the dashboard within minutes
REPEAT_S = 86400.0      # the WARNING again while it lasts: a log line scrolls away, an expiry does not


@dataclass(frozen=True)
class ClientCert:
    not_before: datetime
    not_after: datetime
    subject: str        # RFC 4514, as openssl x509 -subject prints it
    fingerprint: str    # as OpenADR prints it (the last 10 bytes of the SHA-256): what the VTN operator enrols


def read_client_cert(path: str) -> ClientCert | None:
    """The first certificate of the PEM file at `path`; None when it cannot be read or is not one (the TLS file
    checks say why, at check-config and at each registration)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except Exception:   # noqa: BLE001 - whatever cryptography cannot read must not stop the gateway's start
        return None
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()[-10:]
    return ClientCert(cert.not_valid_before_utc, cert.not_valid_after_utc, cert.subject.rfc4514_string(),
                      ":".join(f"{b:02X}" for b in digest))


def _utc(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC"


def expiring_warning(name: str, path: str, cert: ClientCert, now: float) -> str | None:
    """The sentence said while the certificate expires within WARN_DAYS and has not yet (check-config and the log)."""
    left = cert.not_after.timestamp() - now
    if not 0 < left <= WARN_DAYS * 86400:
        return None
    return (f"{name} {path} expires on {_utc(cert.not_after)}, in {span(left)} (subject {cert.subject}): renew it "
            f"before then, or the VTN refuses the gateway (no demand-response events, telemetry waits in the queue); "
            f"put the new certificate and key in place of these files: the VEN reads them at its next registration, "
            f"no restart needed")


def cert_expiry_warnings(c: OpenadrConfig, now: float) -> list[str]:
    """check-config's warning for a certificate expiring within WARN_DAYS (an expired one is an error there)."""
    cert = read_client_cert(c.cert) if c.cert else None
    warning = cert and expiring_warning(c.named("cert"), c.cert, cert, now)
    return [warning] if warning else []


class CertWatch:
    """Reads openadr.cert at most every `every_s` (monotonic seconds) and logs its expiry as a fault: see the
    module's docstring. Quiet without a certificate and while the file cannot be read (the VEN says that)."""

    def __init__(self, config: OpenadrConfig, every_s: float = CHECK_EVERY_S, repeat_s: float = REPEAT_S):
        self._cfg, self._every, self._repeat = config, every_s, repeat_s
        self._next = -math.inf
        self.last: ClientCert | None = None
        self.state: str | None = None       # "expiring" or "expired" while the log's line is in force
        self._warned_at = -math.inf         # monotonic time of the last WARNING: a clock step is no day
        self._warned_for: datetime | None = None    # the notAfter it named: another certificate is news

    @property
    def every_s(self) -> float:
        """The least time between two looks: asked more often, it answers from the last."""
        return self._every

    def check(self, mono: float, now: float) -> None:
        """Read the file if `every_s` has passed (`mono` monotonic seconds) and judge it at wall time `now`."""
        if not self._cfg.cert or mono < self._next:
            return
        self._next = mono + self._every
        cert = read_client_cert(self._cfg.cert)
        if cert is None:    # missing, or half-written by a renewal: the VEN's own lines say it
            self.last = None
            return
        self.last = cert
        name, path = self._cfg.named("cert"), self._cfg.cert
        left = cert.not_after.timestamp() - now
        # a line in force (state) always names the notAfter it was for (_warned_for)
        if self.state is not None and left > 0 and cert.not_after > self._warned_for:
            # another file, later than the one the log's line is about: said with its fingerprint even when it too
            # runs out within WARN_DAYS (a CA issuing short certificates), whose WARNING then follows
            self._renewed(name, path, cert)
        if left <= 0:
            if self.state != "expired":
                self.state, self._warned_for = "expired", cert.not_after
                log.error("%s %s expired on %s (subject %s): the VTN refuses the gateway, so no demand-response "
                          "events come and telemetry waits in the queue; renew it: the VEN reads the new files at "
                          "its next registration, no restart needed", name, path, _utc(cert.not_after), cert.subject)
        elif left <= WARN_DAYS * 86400:
            if self.state != "expiring" or cert.not_after != self._warned_for or mono - self._warned_at >= self._repeat:
                self.state, self._warned_at, self._warned_for = "expiring", mono, cert.not_after
                log.warning("%s", expiring_warning(name, path, cert, now))
        elif self.state is not None:
            # a later file was said renewed above: this is the same one, judged again by a clock put back (it ran
            # ahead), not renewed and no longer ending soon
            log.info("%s %s is valid until %s, more than %d days by this clock (it read later before): no longer "
                     "expiring", name, path, _utc(cert.not_after), WARN_DAYS)
            self.state, self._warned_for = None, None

    def _renewed(self, name: str, path: str, cert) -> None:
        log.info("%s %s renewed: valid until %s (subject %s, fingerprint %s, for the VTN operator); the VEN "
                 "presents it from its next registration", name, path, _utc(cert.not_after), cert.subject,
                 cert.fingerprint)
        self.state, self._warned_for = None, None

    def status(self) -> dict | None:
        """For /api/status vtn.client_cert: null without openadr.cert; the file's expiry and subject (null while it
        cannot be read), and `warning`, the log's line in force: "expiring" (within `warn_days`), "expired" or null."""
        if not self._cfg.cert:
            return None
        c = self.last
        return {"file": self._cfg.cert, "not_after": c.not_after.isoformat() if c else None,
                "subject": c.subject if c else None, "warn_days": WARN_DAYS, "warning": self.state}

    def metric_value(self) -> float:
        """notAfter in Unix seconds; NaN without a certificate or while it cannot be read (no alert fires then)."""
        return self.last.not_after.timestamp() if self.last else math.nan

"""Gateway configuration: the keys, their defaults and their checks. One TOML file, environment variables
override keys (ven.config_load reads them); ven.config_checks looks at the files on the machine.

The key names are a public contract (README documents each one). Validation is strict: an unknown
key or a wrong type is an error that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .config_checks import _looked_for, _zone_mismatch


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# a TOML array (a list) for a key kept as a tuple, the sections being frozen; strict mode takes no list for one
_LISTED = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)


# holidays = [2025-12-25], unquoted: a TOML date, which the installer meant as the day it reads as
_TOML_DATES = BeforeValidator(lambda v: [d.isoformat() if type(d) is datetime.date else d for d in v]
                              if isinstance(v, list) else v)


def _fits_a_real(v: float) -> float:
    if abs(v) > 3.4028234663852886e38:   # the largest finite single-precision float
        raise ValueError(f"must be within -3.4e38..3.4e38 (a BACnet Real), got {v:g}")
    return v


# zero-width non-joiner and joiner: typed inside a word of Persian, Hindi and other scripts (and inside an emoji), part
# of the name as it is written there
_JOINERS = "\u200c\u200d"


def _typed_text(v: str) -> str:
    """A name, path or URL as typed or pasted: a control character in it (a NUL, a line break from a value pasted or
    set with echo) or a blank around it was taken as part of it, and failed far from here: a registration the VTN
    refused or a URL it did not know, a traceback at `run` for a NUL in a path."""
    bad = next((c for i, c in enumerate(v) if unicodedata.category(c) in ("Cc", "Cf")
                and not (c in _JOINERS and 0 < i < len(v) - 1)), None)
    if bad is not None:
        # Cf: a zero-width space or byte-order mark copied from a web page or a document, invisible in an editor
        what = "a control character" if unicodedata.category(bad) == "Cc" else "an invisible character"
        raise ValueError(f"holds {what} ({bad!r}), got {v!r}")
    if v != v.strip():
        raise ValueError(f"has a blank at its start or end, taken as part of it: remove it, got {v!r}")
    return v


def is_loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":   # "localhost." is the same name, fully qualified
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


# underscores too: not valid in DNS host names, but container names (edgegateway_vtn_1) resolve
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IP literal or a DNS name: a value such as "http://127.0.0.1" must fail here, not at bind time."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    # an all-digit last label is a mistyped IPv4 address (300.1.1.1), never a resolvable name
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536
            or not _is_host(host)):
        raise ValueError(f"{what} must look like host:port (no scheme or path), got {value!r}")
    return value


def check_bacnet_address(value: str) -> str:
    """Raise ValueError unless `value` is an ip/mask:port a BACnet/IP stack can bind to."""
    ip_mask, sep, port = value.rpartition(":")
    mask = ip_mask.partition("/")[2]
    if not sep or "/" not in ip_mask or not (port.isascii() and port.isdigit()):
        raise ValueError(f"must look like ip/mask:port, e.g. 127.0.0.1/8:47808, got {value!r}")
    try:
        ipaddress.IPv4Interface(ip_mask)
    except ValueError as err:
        raise ValueError(f"{value!r}: {err}") from None
    # BAC0 reads the mask with int() and treats 0 as "not given": 255.0.0.0 or /0 would silently
    # become /24 on the default port
    if not (mask.isascii() and mask.isdigit()) or not 1 <= int(mask) <= 32:
        prefix = ipaddress.IPv4Interface(ip_mask).network.prefixlen   # a dotted netmask, as a NIC's settings show it
        meant = f"; did you mean {ip_mask.partition('/')[0]}/{prefix}:{port}?" if "." in mask and prefix else ""
        raise ValueError(f"{value!r}: the mask must be a prefix length 1..32, e.g. /24{meant}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: port must be 1..65535")
    iface = ipaddress.IPv4Interface(ip_mask)
    ip, net = iface.ip, iface.network
    # no NIC holds one of these: bacpypes3 bound to it anyway and the device "answered" nothing (a multicast
    # address), or failed each broadcast in a traceback (the network's broadcast address)
    kind = ("any address" if ip.is_unspecified else "a multicast address" if ip.is_multicast
            else "a broadcast or reserved address" if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255")
            else f"the broadcast address of {net}" if net.prefixlen <= 30 and ip == net.broadcast_address
            else f"the network address of {net}" if net.prefixlen <= 30 and ip == net.network_address else None)
    if kind:
        raise ValueError(f"{value!r}: {ip} is {kind}, not a station's: give the address of the NIC that faces the BAS")
    return value


class BacnetConfig(_Section):
    address: str = "127.0.0.1/8:47808"
    device_id: int = Field(500001, ge=0, le=4194302)
    device_name: str = Field("EdgeGateway", min_length=1)
    # forecaster.core's DEFAULT_MIN_KW / DEFAULT_MAX_KW (a test holds them equal: the unit guard is off below the
    # default, and importing the forecaster here would load numpy into check-config)
    input_min_kw: float = -100000.0
    input_max_kw: float = 100000.0
    bbmd_address: str = ""                     # "ip[:port]" of a BBMD to register with as a foreign device
    bbmd_ttl: int = Field(900, ge=30, le=65535)  # seconds; re-registered before it runs out
    dcc_password: str = ""                     # DeviceCommunicationControl password; unset, only enable is taken
    # sources that may write (bacnet_api.write_access); empty: anyone
    write_from: Annotated[tuple[str, ...], _LISTED] = ()

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_bacnet_address(v)

    @field_validator("device_name")
    @classmethod
    def _device_name(cls, v: str) -> str:
        from bacnet_api.points import TAKEN_NAMES

        _typed_text(v)
        if v in TAKEN_NAMES:
            raise ValueError(f"{v!r} is the name of one of the device's objects (a BACnet device's object names "
                             f"are unique); choose another")
        return v

    @field_validator("input_min_kw", "input_max_kw")
    @classmethod
    def _real(cls, v: float) -> float:
        # input-power-meter serves them as minPresValue / maxPresValue: beyond a Real they read as infinite, and
        # a write of 3.4e38 (many devices' "no data") was taken
        return _fits_a_real(v)

    @field_validator("bbmd_address")
    @classmethod
    def _bbmd(cls, v: str) -> str:
        if not v:
            return v
        try:    # the default port added here is not shown: the error said "got ' 10.0.0.1:47808'" of " 10.0.0.1"
            host = _host_port(v if ":" in v else f"{v}:47808", "bbmd_address").rpartition(":")[0]
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"must be an IPv4 address with an optional :port 1..65535, e.g. 10.0.0.5:47808, "
                             f"got {v!r}") from None
        return v

    @field_validator("dcc_password")
    @classmethod
    def _dcc_password(cls, v: str) -> str:
        # the value is never echoed: it is a secret
        if v and not 1 <= len(v) <= 20:
            raise ValueError(f"must be 1..20 characters (a BACnet DeviceCommunicationControl password), "
                             f"got {len(v)}")
        if any(not ch.isprintable() for ch in v):
            raise ValueError("must be printable characters only (a BAS operator types it)")
        return v

    @field_validator("write_from")
    @classmethod
    def _write_from(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from bacnet_api.write_access import parse_entry  # the parse the device applies

        bad = []
        for entry in v:
            try:
                parse_entry(entry)
            except ValueError as err:
                bad.append(f"entry {entry!r}: {err}")
        if bad:
            raise ValueError("; ".join(bad))
        return v

    @model_validator(mode="after")
    def _bounds(self) -> "BacnetConfig":
        if self.input_min_kw >= self.input_max_kw:
            raise ValueError("input_min_kw must be below input_max_kw")
        if self.address.rpartition(":")[0].endswith("/32") and not self.bbmd_address:
            # bacpypes3 fails each broadcast it is asked for (the start's I-Am, a Who-Is) in a traceback, and a BAS
            # discovers the device by broadcast: only a foreign device, reached through its BBMD, does without one
            raise ValueError(f"address {self.address!r}: a /32 has no broadcast address, which BACnet/IP needs "
                             "(Who-Is, I-Am): give the prefix the NIC has (e.g. /24), or bbmd_address to reach the "
                             "network through a BBMD")
        return self


class MeterConfig(_Section):
    address: str = "12345:2"
    object: str = "analogInput 2"
    property: str = "presentValue"
    router: str = ""
    poll_seconds: float = Field(10.0, gt=0, le=86400)
    timeout_seconds: float = Field(5.0, gt=0, le=3600)
    # a fault's end is logged once the meter has answered this long (and 5 reads) in a row: a lost read
    # meanwhile is the same fault. Doubled for a fault that comes back soon (bacnet_api.meter)
    settle_seconds: float = Field(60.0, gt=0, le=86400)
    units: str = ""   # the unit the meter's value is in, instead of its units property; "" = the meter says

    # the BACnet rules, in the package that speaks BACnet (imported here: bacpypes3 is slow to import)
    @field_validator("address")
    @classmethod
    def _meter_address(cls, v: str) -> str:
        from bacnet_api.meter_target import check_meter_address
        return check_meter_address(v)

    @field_validator("object")
    @classmethod
    def _object(cls, v: str) -> str:
        from bacnet_api.meter_target import check_object
        return check_object(v)

    @field_validator("property")
    @classmethod
    def _property(cls, v: str) -> str:
        from bacnet_api.meter_target import check_property
        return check_property(v)

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        return _host_port(v, "router") if v else v

    @field_validator("units")
    @classmethod
    def _units(cls, v: str) -> str:
        from bacnet_api.meter_units import check_configured  # the check the meter reader applies

        return check_configured(v) if v else v


# forecaster.features.DEMAND_MINUTES, not imported: it would bring numpy into the start-up before the device answers
_DEMAND_SECONDS = 15 * 60


def shown_url(url: str) -> str:
    """A URL as the log, check-config and /api/status show it: a password in it (user:password@, which aiohttp
    sends as basic auth) as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # a URL urlsplit refuses (a stray "[") may still carry a password: mask what looks like one
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}").geturl()


# the OpenADR 2.0b services, each a path segment after the VTN's URL
_SERVICES = {"eievent", "eireport", "eiregisterparty", "eiopt", "oadrpoll"}


def _url_text(v: str, shown: str) -> None:
    # a blank pasted after the URL went to the VTN as %20 in every request's path: 404 at each registration; urlsplit
    # itself drops a line break or tab, which aiohttp sends
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in v):
        raise ValueError(f"holds a blank, control or invisible character (pasted with it?), got {shown!r}")


class OpenadrConfig(_Section):
    vtn_url: str = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    ven_name: str = Field("edge-gateway", min_length=1)
    report_resource_id: str = Field("main-meter", min_length=1)
    # false for a programme that takes no telemetry (events only): the TELEMETRY_USAGE report is not offered, readings
    # are not queued for the VTN, and no warning waits for a request that will not come; the meter is read as before
    telemetry: bool = True
    telemetry_seconds: float = Field(10.0, gt=0, le=86400)
    # the programmes (eiMarketContext) the site is enrolled in, for a VTN that runs several; empty: every event the
    # VTN sends this VEN. An event of another is kept and shown, never followed, and answered optOut
    market_contexts: Annotated[tuple[str, ...], _LISTED] = ()
    # the site's grid, told to the VTN in the report metadata (openleadr alone says 50 Hz / 230 V)
    power_hertz: Literal[50, 60] = 50
    power_voltage: float = Field(230.0, gt=0, le=1_000_000)
    queue_max_days: float = Field(7.0, gt=0, le=3650)
    retry_min_seconds: float = Field(1.0, gt=0, le=86400)
    retry_max_seconds: float = Field(60.0, gt=0, le=86400)
    request_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    # how long the VTN must answer in a row (and 3 polls) before a VTN fault is logged as ended; doubled for a fault
    # that comes back soon (bacnet_api/settle.py). 0: at the first answer
    settle_seconds: float = Field(60.0, ge=0, le=86400)
    # registered this long (and 3 polls) with the report offered and no telemetry request: one WARNING, and the
    # dashboard says so (a VTN requests at registration or on the next polls; readings pile up meanwhile)
    request_wait_seconds: float = Field(600.0, gt=0, le=86400)
    cert: str = ""
    key: str = ""
    passphrase: str = ""
    ca_file: str = ""
    vtn_fingerprint: str = ""
    # the site's outbound HTTP proxy, http://[user:password@]host:port; "" goes straight to the VTN. Not read from
    # HTTPS_PROXY: a variable set for a container's build would send the utility's traffic through it unseen
    proxy: str = ""
    # key -> the EDGE_GATEWAY__* variable that set it: a TLS file error then says where to look
    _env: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def vtn_url_shown(self) -> str:
        return shown_url(self.vtn_url)

    def named(self, key: str) -> str:
        """The key as the operator should look for it: "openadr.cert", or "openadr.cert (from VAR)"."""
        var = self._env.get(key)
        return f"openadr.{key} (from {var})" if var else f"openadr.{key}"

    @field_validator("ven_name", "report_resource_id", "cert", "key", "ca_file")
    @classmethod
    def _typed(cls, v: str) -> str:
        return _typed_text(v)

    @field_validator("market_contexts")
    @classmethod
    def _contexts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for context in v:
            # compared exactly with the event's: a blank or padded entry would match nothing and opt out of all
            if not context.strip() or context != context.strip():
                raise ValueError(f"each must be a programme's market context URI as the VTN sends it, without "
                                 f"spaces around it, e.g. \"http://utility.example/programs/cpp\", got {context!r}")
        return v

    @field_validator("vtn_url")
    @classmethod
    def _url(cls, v: str) -> str:
        # the errors go to the journal (check-config is the unit's ExecStartPre): the password in it as *** there too
        shown = shown_url(v)
        _url_text(v, shown)
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {shown!r}")
        try:
            url = urllib.parse.urlsplit(v)
            port = url.port  # urlsplit checks the port only when it is read
        except ValueError as err:
            raise ValueError(f"{shown!r}: {err}") from None
        if port == 0:
            raise ValueError(f"{shown!r}: port must be 1..65535")
        if not url.hostname or not _is_host(url.hostname):
            raise ValueError(f"needs a host, e.g. http://vtn.example:8080/OpenADR2/Simple/2.0b, got {shown!r}")
        # each request goes to vtn_url + "/" + the service: after a query or a fragment, or after a service already
        # (a request URL copied from the VTN's log), every one of them was a 404
        if url.query or url.fragment or v.endswith(("?", "#")):
            raise ValueError(f"takes no ?query or #fragment (the gateway appends /EiEvent, /OadrPoll ... to it), "
                             f"got {shown!r}")
        service = url.path.rstrip("/").rpartition("/")[2]
        if service.lower() in _SERVICES:
            base = shown.rstrip("/").removesuffix(service).rstrip("/")
            raise ValueError(f"ends in the OpenADR service {service} (the gateway appends each service to it): "
                             f"did you mean {base!r}?")
        return v

    @property
    def proxy_shown(self) -> str:
        return shown_url(self.proxy)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        if not v:
            return v
        shown = shown_url(v)
        _url_text(v, shown)
        example = "e.g. http://proxy.site:3128 or http://user:password@proxy.site:3128"
        if not v.startswith("http://"):
            # https:// to the VTN goes through the proxy too (CONNECT); only the hop to the proxy is plain http
            raise ValueError(f"must start with http:// (the hop to the proxy; an https:// VTN is reached through it "
                             f"with CONNECT), {example}, got {shown!r}")
        try:
            url = urllib.parse.urlsplit(v)
            port = url.port
        except ValueError as err:
            raise ValueError(f"{shown!r}: {err}") from None
        if not url.hostname or not _is_host(url.hostname) or not port:
            raise ValueError(f"needs a host and a port, {example}, got {shown!r}")
        if url.path not in ("", "/") or url.query or url.fragment:
            raise ValueError(f"takes no path, {example}, got {shown!r}")
        return v

    @field_validator("telemetry_seconds")
    @classmethod
    def _whole_seconds(cls, v: float) -> float:
        if v != int(v):
            # OpenADR durations travel as whole seconds: 2.5 went out as PT2S, 0.5 as PT0S
            raise ValueError(f"must be a whole number of seconds (report durations are sent in whole seconds), "
                             f"got {v:g}")
        return v

    @field_validator("vtn_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str) -> str:
        # openleadr compares its own form exactly: the last 10 bytes of the certificate's SHA-256, upper
        # case, colon-separated. A full SHA-256 fingerprint (openssl x509 -fingerprint -sha256) is cut to it.
        if not v:
            return v
        pairs = v.strip().upper().rpartition("=")[2].strip().split(":")  # "sha256 Fingerprint=AB:..." too
        if len(pairs) not in (10, 32) or not all(re.fullmatch(r"[0-9A-F]{2}", p) for p in pairs):
            raise ValueError("must be the VTN certificate's fingerprint as openleadr prints it (10 colon-separated "
                             f"hex bytes, e.g. 3E:A1:...:7C) or its full SHA-256 fingerprint, got {v!r}")
        return ":".join(pairs[-10:])

    @model_validator(mode="after")
    def _tls_pair(self) -> "OpenadrConfig":
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key must be given together")
        return self

    @model_validator(mode="after")
    def _retry_bounds(self) -> "OpenadrConfig":
        if self.retry_min_seconds > self.retry_max_seconds:
            raise ValueError(f"retry_min_seconds ({self.retry_min_seconds:g}) must not exceed "
                             f"retry_max_seconds ({self.retry_max_seconds:g})")
        return self

    def transport_warnings(self) -> list[str]:
        """What a VTN off this machine is exposed to through this configuration. On loopback nothing crosses a
        network (the demo, the examples). The host alone is named: a URL may carry a password."""
        host = urllib.parse.urlsplit(self.vtn_url).hostname or ""
        if is_loopback_host(host):
            return []
        if self.vtn_url.startswith("http://"):
            # openleadr's VTN checks a VEN's signatures only over TLS; the VEN checks the VTN's (and refuses
            # unsigned answers) only with vtn_fingerprint
            injected = (" (openadr.vtn_fingerprint still refuses events the VTN did not sign)" if self.vtn_fingerprint
                        else ", and anyone on the path can send the gateway events, which drive ADR-Event-Level")
            password = (", the utility account's password (user:password@ in the URL)"
                        if urllib.parse.urlsplit(self.vtn_url).password is not None else "")
            return [f"{self.named('vtn_url')} is plain http to {host}, not loopback: events, opt answers{password} and "
                    f"telemetry cross the network in clear text{injected}: use https:// with openadr.cert and "
                    f"openadr.key"]
        if not self.cert:
            # the VEN then presents no client certificate and signs nothing: openleadr's VTN resets the
            # handshake, or answers 463 once registered
            return [f"{self.named('vtn_url')} is https but openadr.cert and openadr.key are unset: the gateway "
                    f"presents no client certificate, so the VTN refuses it (OpenADR 2.0b requires one) or cannot "
                    f"tell its opt answers and telemetry from anyone else's: set both"]
        return []

    def environment_proxy_warnings(self, environ: Mapping[str, str]) -> list[str]:
        """A proxy variable in the gateway's environment while openadr.proxy is unset: whoever set it (in the unit
        file, the container) expects the VTN to be reached through it, and would find only "VTN unreachable"."""
        host = urllib.parse.urlsplit(self.vtn_url).hostname or ""
        if self.proxy or is_loopback_host(host):
            return []
        scheme = "https" if self.vtn_url.startswith("https://") else "http"
        no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        if no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):
            return []
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
            if environ.get(name):
                return [f"{name} is set in the gateway's environment ({shown_url(environ[name])}) but is not read: "
                        f"requests go straight to {host}; to reach the VTN through that proxy set openadr.proxy"]
        return []


class StorageConfig(_Section):
    path: str = "var/gateway.sqlite"
    retry_seconds: float = Field(10.0, gt=0, le=3600)   # a file that will not open or take writes, tried again

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # "" is Path("."), the working directory: every part would fail to open it and retry forever
        if v.strip():
            _typed_text(v)
        if not v.strip() or v.endswith("/") or Path(v).name in ("", ".", ".."):
            raise ValueError(f"must name a SQLite file, e.g. /var/lib/edge-gateway/gateway.sqlite, got {v!r}")
        return v


# A wrong token is answered at most a second late (ven.http_api.REFUSED_DELAY_MAX_S), over 64 connections at once:
# 4 digits fall in minutes. 16 random characters are out of reach however many guesses
MIN_TOKEN_CHARS = 16


_UNSENDABLE = "a control character inside (a line break?), which no HTTP client can send in a header"


def _unsendable(token: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in token)


def _not_typed(v: str) -> bool:
    try:
        _typed_text(v)
    except ValueError:
        return True
    return False


class HttpConfig(_Section):
    address: str = "127.0.0.1:8000"
    token: str = ""
    # a file holding the token (a Docker secret, a systemd credential): in neither the config nor the environment,
    # where `docker inspect` and /proc/<pid>/environ show it
    token_file: str = ""
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data):
        path = data.get("token_file") if isinstance(data, dict) else None
        if not path or not isinstance(path, str) or _not_typed(path):
            return data     # unset, not a string, or no file name: the field's own check says so
        if data.get("token"):
            raise ValueError("set token or token_file, not both")
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            # relative: from the working directory, which is / under systemd, not where the operator stands
            raise ValueError(f"token_file {_looked_for(path)}: {getattr(err, 'strerror', None) or err}") from None
        if not token:
            raise ValueError(f"token_file {path} is empty")
        if _unsendable(token):
            raise ValueError(f"token_file {path} holds {_UNSENDABLE}")
        return {**data, "token": token}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _host_port(v, "address")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, v: str) -> str:
        return _typed_text(v)

    @field_validator("token")
    @classmethod
    def _sendable(cls, v: str) -> str:
        # a line break inside (a token file written with one) was taken, and no HTTP client can send it (helper
        # verify40)
        if _unsendable(v):
            raise ValueError(f"holds {_UNSENDABLE}")
        if v != v.strip():
            # the API compares it with the header's credential, which HTTP trims: every request was refused 401
            raise ValueError("has a blank at its start or end, which no HTTP client sends (a header's value is "
                             "trimmed): remove it")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "HttpConfig":
        host = self.address.rpartition(":")[0]
        if self.enabled and not self.token and not is_loopback_host(host):
            raise ValueError(f"address {self.address} is not loopback: set http.token (clients then send "
                             f"'Authorization: Bearer <token>') or bind to 127.0.0.1")
        return self

    def warnings(self) -> list[str]:
        """What the operator API exposes through this configuration. Warnings, not errors: an install that worked
        keeps starting. The token itself is never shown."""
        if not self.enabled:
            return []
        out = []
        if not is_loopback_host(self.address.rpartition(":")[0]):
            out.append(f"http.address {self.address} is not loopback: the dashboard, the API's answers and http.token "
                       f"cross the network in clear text (plain HTTP): put a reverse proxy with TLS in front, with "
                       f"http.address on 127.0.0.1, or reach it through an ssh tunnel")
        if self.token and len(self.token) < MIN_TOKEN_CHARS:
            out.append(f"http.token is {len(self.token)} characters: short enough to be found by trying (wrong tokens "
                       f"are only slowed down a little): use at least {MIN_TOKEN_CHARS} random characters "
                       f"(openssl rand -hex 16 makes 32)")
        return out


class ForecasterConfig(_Section):
    source: Literal["auto", "bacnet_input", "meter"] = "auto"
    cycle_seconds: float = Field(60.0, gt=0, le=86400)
    horizons_minutes: Annotated[tuple[int, int], _LISTED] = (15, 60)
    slope_minutes: int = Field(5, ge=2, le=1440)
    high_load_kw: float | None = None
    low_load_kw: float | None = None
    threshold_days: float = Field(14.0, ge=1, le=366)  # percentiles need a day of 15-min demands (DemandForecaster)
    hysteresis_fraction: float = Field(0.03, ge=0, lt=0.5)
    min_on_minutes: float = Field(15.0, ge=0, le=1440)
    min_off_minutes: float = Field(15.0, ge=0, le=1440)
    arm_fraction: float = Field(0.1, ge=0, le=1000)
    history_days: float = Field(35.0, gt=0, le=366)  # one minute of memory per minute of history
    retrain_minutes: float = Field(1440.0, gt=0, le=525600)
    input_stale_seconds: float = Field(300.0, gt=0, le=86400)
    timezone: str = "UTC"
    holiday_preset: Literal["", "IT"] = ""
    holidays: Annotated[tuple[str, ...], _LISTED, _TOML_DATES] = ()
    # the site's week: weekdays closed as on a holiday, and weekdays with a day kind of their own (partly open)
    rest_weekdays: Annotated[tuple[str, ...], _LISTED] = ("sunday",)
    partial_weekdays: Annotated[tuple[str, ...], _LISTED] = ("saturday",)
    rebound_minutes: float = Field(60.0, ge=0, le=1440)
    # true for a programme whose events are the building's every day (price tiers sent as SIMPLE levels each
    # afternoon): its shed is its normal day, and kept out the afternoons would have nothing left to learn from
    learn_from_events: bool = False

    @field_validator("horizons_minutes")
    @classmethod
    def _horizons(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 < v[0] < v[1] <= 1440:
            raise ValueError(f"must be two increasing positive minute counts up to 1440, e.g. [15, 60], got {list(v)}")
        return v

    @field_validator("high_load_kw", "low_load_kw")
    @classmethod
    def _threshold_real(cls, v: float | None) -> float | None:
        # high-load-threshold / low-load-threshold publish it as a BACnet Real: beyond one, every read of
        # the point failed, and with it every ReadPropertyMultiple naming it (a BAS reading all its points)
        return v if v is None else _fits_a_real(v)

    @model_validator(mode="after")
    def _thresholds(self) -> "ForecasterConfig":
        if self.high_load_kw is not None and self.low_load_kw is not None and self.high_load_kw <= self.low_load_kw:
            # both flags would be on together: shed and charge at once
            raise ValueError(f"high_load_kw ({self.high_load_kw:g}) must be above low_load_kw ({self.low_load_kw:g})")
        return self

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo
        try:
            ZoneInfo(v)
        except (ValueError, LookupError):
            raise ValueError(f"unknown IANA time zone {v!r}, e.g. Europe/Rome") from None
        return v

    @field_validator("rest_weekdays", "partial_weekdays")
    @classmethod
    def _weekdays(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from forecaster.calendar import WEEKDAYS
        for day in v:
            if day not in WEEKDAYS:
                raise ValueError(f"{day!r} is not a weekday; weekdays are {', '.join(WEEKDAYS)} (lower case)")
        return v

    @model_validator(mode="after")
    def _week(self) -> "ForecasterConfig":
        # the default week needs no check, and importing the forecaster (numpy) here would do it at `import ven.cli`,
        # where the class's default instance is built: before main() holds OpenBLAS to one thread
        if (self.rest_weekdays, self.partial_weekdays) != (("sunday",), ("saturday",)):
            from forecaster.calendar import check_week
            check_week(self.rest_weekdays, self.partial_weekdays)
        return self

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for day in v:
            try:
                datetime.date.fromisoformat(day if len(day) == 10 else f"2000-{day}")
            except ValueError:
                raise ValueError(f"holiday {day!r} must be YYYY-MM-DD or MM-DD") from None
        return v


class GatewayConfig(_Section):
    bacnet: BacnetConfig = BacnetConfig()
    meter: MeterConfig = MeterConfig()
    openadr: OpenadrConfig = OpenadrConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    forecaster: ForecasterConfig = ForecasterConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def _poll_too_slow(self) -> str | None:
        """The meter read no more often than the forecaster calls its power stale: between two readings the forecast,
        rate and load-flag points went to fault, with a WARNING "no power input" of a meter that answered each read."""
        poll, stale = self.meter.poll_seconds, self.forecaster.input_stale_seconds
        if poll < stale:
            return None
        return (f"meter.poll_seconds ({poll:g}) is not under forecaster.input_stale_seconds ({stale:g}): between two "
                f"meter readings the forecaster has no power input, and the forecast, power-rate-of-change and load "
                f"flag points show fault")

    def _is_own_station(self, where: str) -> bool:
        """Whether `where` (ip[:port]) is the gateway's own BACnet/IP device, which bacpypes3 then asks itself."""
        own_ip, own_port = self.bacnet.address.partition("/")[0], self.bacnet.address.rpartition(":")[2]
        host, _, port = where.rpartition(":") if ":" in where else (where, "", "47808")
        try:
            ip, own = ipaddress.IPv4Address(host.partition("/")[0]), ipaddress.IPv4Address(own_ip)
        except ValueError:
            return False     # network:mac, or a host name
        # any 127.x on the device's own port is the device itself to bacpypes3
        return (ip == own or ip.is_loopback and own.is_loopback) and port == own_port

    @model_validator(mode="after")
    def _meter_not_the_gateway(self) -> "GatewayConfig":
        # read, the gateway answered for the meter: "analogInput 2 does not exist on the meter: check meter.object",
        # or through itself as the router, no response
        own = f"the gateway's own BACnet device (bacnet.address {self.bacnet.address})"
        if self.meter.router and self._is_own_station(self.meter.router):
            raise ValueError(f"meter.router {self.meter.router} is {own}: give the ip:port of the router to the "
                             f"meter's network")
        if self._is_own_station(self.meter.address):
            raise ValueError(f"meter.address {self.meter.address} is {own}: give the meter's address")
        return self

    def _thresholds_beyond_the_input(self) -> list[str]:
        # power outside bacnet.input_min_kw..input_max_kw is refused, and so is a forecast: a threshold beyond them
        # kept its flag off for good (a kW threshold beside an input_max_kw written in MW, say). One at a bound is
        # reached: the bounds take their own value, a flag turns on at its threshold, and a sub-meter's site with
        # input_min_kw 0 forecasts 0 kW each night (low_load_kw 0: its plant is off)
        b, f, out = self.bacnet, self.forecaster, []
        if f.high_load_kw is not None and f.high_load_kw > b.input_max_kw:
            out.append(f"forecaster.high_load_kw ({f.high_load_kw:g}) is above bacnet.input_max_kw "
                       f"({b.input_max_kw:g}): power above that is refused, so high-load-conditions never turns on")
        if f.low_load_kw is not None and f.low_load_kw < b.input_min_kw:
            out.append(f"forecaster.low_load_kw ({f.low_load_kw:g}) is below bacnet.input_min_kw "
                       f"({b.input_min_kw:g}): power below that is refused, so low-load-conditions never turns on")
        return out

    def warnings(self) -> list[str]:
        """Settings that are valid but lose something the reader of the config likely wants."""
        out = []
        # (no report interval at all with openadr.telemetry = false)
        if self.openadr.telemetry and self.meter.poll_seconds > self.openadr.telemetry_seconds:
            out.append(f"meter.poll_seconds ({self.meter.poll_seconds:g}) is longer than openadr.telemetry_seconds "
                       f"({self.openadr.telemetry_seconds:g}): report intervals the meter was not read in are not "
                       f"sent to the VTN")
        if self.meter.router:
            from bacnet_api.client import network_of
            if network_of(self.meter.address) is None:
                out.append(f"meter.router ({self.meter.router}) is not used: meter.address {self.meter.address} is a "
                           f"BACnet/IP address, read directly; meter.router is for a meter on another network "
                           f"(network:mac, e.g. 12345:2): leave it empty")
        # warnings, not errors: each costs the forecaster's points only, and a site upgraded with one had its gateway
        # refuse to start, its demand response with it
        why = self._poll_too_slow() if self.forecaster.source != "bacnet_input" else None
        if why:     # auto: only while the meter stands in for a BAS that stopped writing
            out.append(f"{why}: read the meter more often or raise input_stale_seconds" if self.forecaster.source ==
                       "meter" else f"{why} whenever the meter stands in for the BAS input (forecaster.source auto)")
        out += self._thresholds_beyond_the_input()
        stale = self.forecaster.input_stale_seconds
        if stale > _DEMAND_SECONDS:
            out.append(f"forecaster.input_stale_seconds ({stale:g}) is longer than the 15-minute demand window: "
                       f"about 15 minutes without power show the forecasts and the rate in fault while the input "
                       f"does not count as stale yet (no warning, and `auto` does not turn to the meter until "
                       f"{stale:g} s)")
        if self.openadr.ca_file and self.openadr.vtn_url.startswith("http://"):
            # set for a VTN on TLS, with the URL's scheme left at the example's http://
            out.append(f"{self.openadr.named('ca_file')} is set but {self.openadr.named('vtn_url')} is plain http://: "
                       f"it is not used, nothing checks the VTN's certificate (https:// meant?)")
        out += self.openadr.transport_warnings()
        out += self.openadr.environment_proxy_warnings(os.environ)
        out += self.http.warnings()
        zone = _zone_mismatch(self.forecaster.timezone)
        if zone:
            out.append(zone)
        return out

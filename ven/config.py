"""Gateway configuration: one TOML file, environment variables override keys.

The key names are a public contract (README documents each one). Validation is strict: an unknown
key or a wrong type is an error that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import copy
import ipaddress
import os
import pwd
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

ENV_PREFIX = "EDGE_GATEWAY__"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


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
    return value


class BacnetConfig(_Section):
    address: str = "127.0.0.1/8:47808"
    device_id: int = Field(500001, ge=0, le=4194302)
    device_name: str = Field("EdgeGateway", min_length=1)
    input_min_kw: float = -100000.0
    input_max_kw: float = 100000.0
    bbmd_address: str = ""                     # "ip[:port]" of a BBMD to register with as a foreign device
    bbmd_ttl: int = Field(900, ge=30, le=65535)  # seconds; re-registered before it runs out
    dcc_password: str = ""                     # DeviceCommunicationControl password; unset, only enable is taken
    write_from: tuple[str, ...] = ()           # sources that may write (bacnet_api.write_access); empty: anyone

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_bacnet_address(v)

    @field_validator("bbmd_address")
    @classmethod
    def _bbmd(cls, v: str) -> str:
        if not v:
            return v
        host = _host_port(v if ":" in v else f"{v}:47808", "bbmd_address").rpartition(":")[0]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"must be an IPv4 address with an optional :port, e.g. 10.0.0.5:47808, got {v!r}") \
                from None
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

    @field_validator("write_from", mode="before")
    @classmethod
    def _write_from_list(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v

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

    @field_validator("address")
    @classmethod
    def _meter_address(cls, v: str) -> str:
        from bacpypes3.pdu import Address, combined_pattern

        # combined_pattern first: a string it does not match, bacpypes3 resolves as a host name (DNS)
        form = "network:mac (e.g. 12345:2) or a BACnet/IP meter's ip[:port] (e.g. 192.168.1.20:47808)"
        if "*" in v or not combined_pattern.match(v):
            raise ValueError(f"must be {form}, got {v!r}")
        try:
            addr = Address(v)
        except ValueError as err:
            net, _, mac = v.partition(":")
            # the MS/TP MAC written first, as some meter labels and BAS tools show it ("2:12345")
            swapped = (f"; did you mean {mac}:{net}? (network first)"
                       if net.isdigit() and mac.isdigit() and int(net) <= 255 and 0 < int(mac) < 65535 else "")
            raise ValueError(f"{v!r}: {err} (network 1..65534, mac 0..255 or hex bytes){swapped}") from None
        if addr.addrType != Address.remoteStationAddr and len(addr.addrAddr) != 6:  # 6: IPv4 + port
            raise ValueError(f"must be {form}, got {v!r}")
        for port in re.findall(r"\d+\.\d+\.\d+\.\d+:(\d+)", v):  # bacpypes3 keeps 70000 and fails at send
            if not 0 < int(port) < 65536:
                raise ValueError(f"{v!r}: port must be 1..65535")
        return v

    @field_validator("object")
    @classmethod
    def _object(cls, v: str) -> str:
        # imported here: bacpypes3 takes about 0.2 s to import, which `edge-gateway --help` should not pay
        from bacpypes3.primitivedata import ObjectIdentifier, ObjectType

        from bacnet_api.client import object_id  # the parse the meter reader applies

        kind, _, inst = object_id(v).partition(",")
        if not kind or not inst:
            raise ValueError(f"must look like 'analogInput 2', got {v!r}")
        try:
            ObjectType(kind)
        except ValueError:
            raise ValueError(f"unknown BACnet object type {kind!r} (e.g. analogInput, analogValue)") from None
        try:
            ObjectIdentifier(f"{kind},{inst}")
        except ValueError:
            raise ValueError(f"instance must be a whole number 0..4194302, got {v!r}") from None
        return v

    @field_validator("property")
    @classmethod
    def _property(cls, v: str) -> str:
        from bacpypes3.basetypes import PropertyIdentifier

        try:
            PropertyIdentifier(v)
        except ValueError:
            raise ValueError(f"unknown BACnet property {v!r} (e.g. presentValue)") from None
        return v

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        return _host_port(v, "router") if v else v

    @field_validator("units")
    @classmethod
    def _units(cls, v: str) -> str:
        from bacnet_api.meter_units import check_configured  # the check the meter reader applies

        return check_configured(v) if v else v


class OpenadrConfig(_Section):
    vtn_url: str = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    ven_name: str = Field("edge-gateway", min_length=1)
    report_resource_id: str = Field("main-meter", min_length=1)
    telemetry_seconds: float = Field(10.0, gt=0, le=86400)
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
    cert: str = ""
    key: str = ""
    passphrase: str = ""
    ca_file: str = ""
    vtn_fingerprint: str = ""
    # key -> the EDGE_GATEWAY__* variable that set it: a TLS file error then says where to look
    _env: dict[str, str] = PrivateAttr(default_factory=dict)

    def named(self, key: str) -> str:
        """The key as the operator should look for it: "openadr.cert", or "openadr.cert (from VAR)"."""
        var = self._env.get(key)
        return f"openadr.{key} (from {var})" if var else f"openadr.{key}"

    @field_validator("vtn_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        try:
            url = urllib.parse.urlsplit(v)
            _ = url.port  # urlsplit checks the port only when it is read
        except ValueError as err:
            raise ValueError(f"{v!r}: {err}") from None
        if not url.hostname or not _is_host(url.hostname):
            raise ValueError(f"needs a host, e.g. http://vtn.example:8080/OpenADR2/Simple/2.0b, got {v!r}")
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
            return [f"{self.named('vtn_url')} is plain http to {host}, not loopback: events, opt answers and "
                    f"telemetry cross the network in clear text{injected}: use https:// with openadr.cert and "
                    f"openadr.key"]
        if not self.cert:
            # the VEN then presents no client certificate and signs nothing: openleadr's VTN resets the
            # handshake, or answers 463 once registered
            return [f"{self.named('vtn_url')} is https but openadr.cert and openadr.key are unset: the gateway "
                    f"presents no client certificate, so the VTN refuses it (OpenADR 2.0b requires one) or cannot "
                    f"tell its opt answers and telemetry from anyone else's: set both"]
        return []


def key_is_encrypted(path: str) -> bool:
    """Whether the PEM private key at `path` needs a passphrase (False when unreadable: others say why)."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except TypeError:
        return True
    except (OSError, ValueError):
        pass
    return False


def tls_file_problems(c: OpenadrConfig) -> list[str]:
    """What is wrong with the TLS files, one line per key, for check-config and before each
    registration. Not a load-time check: `run` keeps retrying, so certificates mounted after start
    (secrets, a late volume) still work."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    problems: list[str] = []
    cert_, key_, pass_, ca_ = (c.named(k) for k in ("cert", "key", "passphrase", "ca_file"))

    def read(name: str, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            problems.append(f"{name}: {_looked_for(path)}: {err.strerror}")
            return None

    if c.cert:
        cert_pem, key_pem = read(cert_, c.cert), read(key_, c.key)
        cert = key = None
        if cert_pem is not None:
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
            except ValueError:
                problems.append(f"{cert_}: {c.cert}: not a PEM certificate")
            else:  # a VTN refuses these after the handshake: the VEN only sees the connection drop
                now = datetime.datetime.now(datetime.timezone.utc)
                if cert.not_valid_after_utc < now:
                    problems.append(f"{cert_}: {c.cert}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
                elif cert.not_valid_before_utc > now:
                    problems.append(f"{cert_}: {c.cert}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                                    "UTC (is this machine's clock right?)")
        if key_pem is not None:
            try:
                key = serialization.load_pem_private_key(key_pem, c.passphrase.encode() or None)
            except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
                if c.passphrase:
                    key = serialization.load_pem_private_key(key_pem, None)
                else:
                    problems.append(f"{pass_}: {key_} {c.key} is encrypted: give its passphrase")
            except ValueError:
                problems.append(f"{pass_}: does not decrypt {key_} {c.key} "
                                "(or the key is not a PEM private key)")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert is not None and key is not None and cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            problems.append(f"{cert_} and {key_} do not belong together: {c.cert} is not the "
                            f"certificate of {c.key}")
    if c.ca_file:
        try:
            ssl.create_default_context(cafile=c.ca_file)
        except (OSError, ssl.SSLError) as err:
            where = c.ca_file if isinstance(err, ssl.SSLError) else _looked_for(c.ca_file)
            problems.append(f"{ca_}: {where}: {getattr(err, 'strerror', None) or err}")
    return problems


def _looked_for(path: str) -> str:
    # a service's working directory is rarely the one the operator is in when the file is missing
    return path if Path(path).is_absolute() else f"{path} (looked for in {Path.cwd()})"


class StorageConfig(_Section):
    path: str = "var/gateway.sqlite"
    retry_seconds: float = Field(10.0, gt=0, le=3600)   # a file that will not open or take writes, tried again

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # "" is Path("."), the working directory: every part would fail to open it and retry forever
        if not v.strip() or v.endswith("/") or Path(v).name in ("", ".", ".."):
            raise ValueError(f"must name a SQLite file, e.g. /var/lib/edge-gateway/gateway.sqlite, got {v!r}")
        return v


def storage_problems(c: StorageConfig) -> list[str]:
    """What check-config can tell about storage.path without writing to it: a directory there never opens."""
    try:
        if Path(c.path).is_dir():
            return [f"storage.path: {c.path} is a directory: name a file in it, e.g. {Path(c.path) / 'gateway.sqlite'}"]
        existing = _nearest_existing(Path(c.path).parent)
        if not existing.is_dir():
            return [f"storage.path: {c.path}: {existing} is not a directory"]
    except OSError:     # a directory on the way this user may not search: storage_warnings says so
        pass
    return []


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def storage_warnings(c: StorageConfig) -> list[str]:
    """Whether this user could write storage.path, asked without writing. `run` goes on without it
    (from memory, retrying), so this is a warning; it speaks for the user check-config runs as."""
    p = Path(c.path)
    try:
        for where in ([p, p.parent] if p.exists() else [_nearest_existing(p.parent)]):  # WAL: files beside it too
            if not os.access(where, os.W_OK | (os.X_OK if where.is_dir() else 0)):
                if os.statvfs(where).f_flag & os.ST_RDONLY:
                    why = f"{where} is on a read-only file system"
                else:
                    why = f"{where} is not writable by {_user()}"
                break
        else:
            return []
    except OSError as err:      # a directory on the way that this user may not search
        why = f"{_user()} cannot look there ({err.strerror}: {err.filename})"
    return [f"storage.path {c.path}: {why}: `run` keeps events, ADR-Opt-Out commands, the telemetry "
            f"queue and forecaster history in memory only, and a restart loses them"]


def _user() -> str:
    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:    # a container run with a bare --user UID has no passwd entry
        return f"uid {os.geteuid()}"


class HttpConfig(_Section):
    address: str = "127.0.0.1:8000"
    token: str = ""
    enabled: bool = True

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _host_port(v, "address")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "HttpConfig":
        host = self.address.rpartition(":")[0]
        if self.enabled and not self.token and not is_loopback_host(host):
            raise ValueError(f"address {self.address} is not loopback: set http.token (clients then send "
                             f"'Authorization: Bearer <token>') or bind to 127.0.0.1")
        return self


class ForecasterConfig(_Section):
    source: Literal["auto", "bacnet_input", "meter"] = "auto"
    cycle_seconds: float = Field(60.0, gt=0, le=86400)
    horizons_minutes: tuple[int, int] = (15, 60)
    slope_minutes: int = Field(5, ge=2, le=1440)
    high_load_kw: float | None = None
    low_load_kw: float | None = None
    threshold_days: float = Field(14.0, gt=0, le=366)
    hysteresis_fraction: float = Field(0.03, ge=0, lt=0.5)
    min_on_minutes: float = Field(15.0, ge=0, le=1440)
    min_off_minutes: float = Field(15.0, ge=0, le=1440)
    arm_fraction: float = Field(0.1, ge=0, le=1000)
    history_days: float = Field(35.0, gt=0, le=366)  # one minute of memory per minute of history
    retrain_minutes: float = Field(1440.0, gt=0, le=525600)
    input_stale_seconds: float = Field(300.0, gt=0, le=86400)
    timezone: str = "UTC"
    holiday_preset: Literal["", "IT"] = ""
    holidays: tuple[str, ...] = ()

    @field_validator("horizons_minutes", "holidays", mode="before")
    @classmethod
    def _list_to_tuple(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("horizons_minutes")
    @classmethod
    def _horizons(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 < v[0] < v[1] <= 1440:
            raise ValueError(f"must be two increasing positive minute counts up to 1440, e.g. [15, 60], got {list(v)}")
        return v

    @field_validator("high_load_kw", "low_load_kw")
    @classmethod
    def _fits_a_real(cls, v: float | None) -> float | None:
        # high-load-threshold / low-load-threshold publish it as a BACnet Real: beyond one, every read of
        # the point failed, and with it every ReadPropertyMultiple naming it (a BAS reading all its points)
        if v is not None and abs(v) > 3.4028234663852886e38:
            raise ValueError(f"must be within -3.4e38..3.4e38 (a BACnet Real), got {v:g}")
        return v

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

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import datetime as dt
        for day in v:
            try:
                dt.date.fromisoformat(day if len(day) == 10 else f"2000-{day}")
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

    def warnings(self) -> list[str]:
        """Settings that are valid but lose something the reader of the config likely wants."""
        out = []
        if self.meter.poll_seconds > self.openadr.telemetry_seconds:
            out.append(f"meter.poll_seconds ({self.meter.poll_seconds:g}) is longer than openadr.telemetry_seconds "
                       f"({self.openadr.telemetry_seconds:g}): report intervals the meter was not read in are not "
                       f"sent to the VTN")
        out += self.openadr.transport_warnings()
        zone = _zone_mismatch(self.forecaster.timezone)
        if zone:
            out.append(zone)
        return out


def _zone_mismatch(zone: str) -> str | None:
    """Two clocks read the building's local time: the BACnet device's localTime/localDate follow the
    machine's zone (TZ, /etc/localtime), the forecaster's time of day, weekdays and holidays follow
    forecaster.timezone. Compared at every hour of this year: zones alike in January and July can still
    change to summer time on other dates (Athens and Jerusalem differ for 51 hours a year)."""
    import datetime
    from zoneinfo import ZoneInfo

    year = datetime.datetime.now(datetime.timezone.utc).year
    first = datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc)
    building = ZoneInfo(zone)
    both = lambda t: (t.astimezone().utcoffset(), t.astimezone(building).utcoffset())
    # Every 6 hours, and hour by hour only where either zone's offset changes (a few times a year): this runs
    # before the BACnet device starts: every hour took 36 ms on 2 cores under load, this 11 ms
    hour, differ, since = datetime.timedelta(hours=1), 0, None
    t, now = first, both(first)
    while t.year == year:
        later = both(t + 6 * hour)
        hours = [t + h * hour for h in range(6)]
        odd = (hours if now[0] != now[1] else []) if later == now else [u for u in hours if len(set(both(u))) > 1]
        differ, since = differ + len(odd), since or (odd[0] if odd else None)
        t, now = t + 6 * hour, later
    if not differ:
        return None
    at = [datetime.datetime(year, month, 15, 12, tzinfo=datetime.timezone.utc) for month in (1, 7)]

    def offsets(values) -> str:
        return " / ".join(f"UTC{'-' if v < datetime.timedelta(0) else '+'}{abs(v).seconds // 3600:02d}:"
                          f"{abs(v).seconds // 60 % 60:02d}" for v in values)
    machine = [t.astimezone().utcoffset() for t in at]
    configured = [t.astimezone(building).utcoffset() for t in at]
    if machine != configured:
        how = f"({offsets(configured)} in January / July) is not this machine's clock zone ({offsets(machine)})"
    else:
        how = (f"changes to or from summer time on other dates than this machine's clock zone: they differ for "
               f"{differ} hours of {year}, from {since:%Y-%m-%d %H:%M} UTC")
    return (f"forecaster.timezone {zone!r} {how}: the BACnet device's localTime and localDate follow the machine, "
            f"the forecaster's time of day, weekdays and holidays follow forecaster.timezone. Set both to the "
            f"building's zone (timedatectl set-timezone; in a container, mount /etc/localtime read-only)")


def _field_type(path: list[str]) -> object:
    """The annotation of the key at `path` (e.g. ["http", "token"] -> str), None if there is no such key."""
    model: type[BaseModel] = GatewayConfig
    for part in path[:-1]:
        field = model.model_fields.get(part)
        sub = field.annotation if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    field = model.model_fields.get(path[-1])
    return field.annotation if field else None


def _env_value(raw: str, annotation: object) -> object:
    """A string key takes the variable's text as is (a token 123456 stays a string); any other key
    reads it as a TOML literal (numbers, booleans, lists), else as a string."""
    if annotation is str:
        # a quoted value was the way to pass such a token before; keep reading it as TOML's string
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            try:
                return tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                pass
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict, environ: Mapping[str, str]) -> tuple[dict, dict[tuple[str, ...], str]]:
    """Overlay the EDGE_GATEWAY__* variables; also return which key each variable set."""
    sources: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            raise ConfigError(f"{name}: names no key (use {ENV_PREFIX}<SECTION>__<KEY>)")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a table key")
        node[path[-1]] = _env_value(raw, _field_type(path))
        sources[tuple(path)] = name
    return data, sources


def _origin_of(loc: tuple, origin: str, sources: Mapping[tuple[str, ...], str]) -> str:
    """Name the environment variable when the bad value came from one, so the operator looks there."""
    for path, name in sources.items():
        if loc[:len(path)] == path:
            return name
    # a section-level check (e.g. retry_min <= retry_max) may have been fed by a variable
    feeding = [name for path, name in sources.items() if path[:len(loc)] == loc]
    return ", ".join([origin, *feeding])


# never echoed in an error: check-config's goes to the journal, read by more people than the config file
SECRETS = {("http", "token"), ("openadr", "passphrase"), ("bacnet", "dcc_password")}


def _all_keys(model: type[BaseModel] = GatewayConfig, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        nested = isinstance(sub, type) and issubclass(sub, BaseModel)
        keys += _all_keys(sub, (*prefix, name)) if nested else [(*prefix, name)]
    return keys


def _did_you_mean(loc: tuple[str, ...]) -> str:
    """The nearest valid key to a mistyped one, or the section a key was written outside of (a key above
    its [section] header, or under another one)."""
    import difflib

    keys, parent, typed = _all_keys(), loc[:-1], loc[-1].lower().replace("-", "_")
    siblings = {k[len(parent)] for k in keys if k[:len(parent)] == parent and len(k) > len(parent)}
    near = difflib.get_close_matches(typed, sorted(siblings), n=1, cutoff=0.7)
    if near:
        named = '.'.join((*parent, near[0]))
        return f"; did you mean {named if (*parent, near[0]) in keys else f'[{named}]'}?"
    elsewhere = [k for k in keys if k[-1] == typed and len(k) > 1]
    if len(elsewhere) == 1:
        return f"; did you mean {'.'.join(elsewhere[0])} (under [{elsewhere[0][0]}])?"
    if elsewhere:   # e.g. address, in [bacnet], [meter] and [http]
        return f"; did you mean {' or '.join('.'.join(k) for k in elsewhere)}?"
    return ""


# pydantic's wording of a range check leaves out the value that failed it
_BOUND_TYPES = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"}


def _describe(err: ValidationError, origin: str, sources: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        secret = tuple(e["loc"]) in SECRETS
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(tuple(str(p) for p in e["loc"]))
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")   # the validators' own sentence says what is wrong
        elif "input" in e and e["type"].endswith("_type"):
            got = f"(got {type(e['input']).__name__} {'not shown: a secret' if secret else repr(e['input'])})"
            if e["type"] == "model_type":   # pydantic says "a valid dictionary or instance of MeterConfig"
                msg = f"must be a table: put its keys under a [{key}] line {got}"
            else:   # a TOML file has arrays, not tuples
                msg = f"{msg.replace('a valid tuple', 'a list, e.g. [...]')} {got}"
        elif e["type"] == "too_long":
            msg = msg.replace("Tuple", "List").replace(" after validation", "")
        elif e["type"] in _BOUND_TYPES and not secret:
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{_origin_of(tuple(e['loc']), origin, sources)}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, origin: str = "config", environ: Mapping[str, str] | None = None) -> GatewayConfig:
    # deep copy: the overlay writes into nested tables, which belong to the caller
    data, sources = _apply_env(copy.deepcopy(data), os.environ if environ is None else environ)
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin, sources)) from None
    # a variable naming a key wins over one setting the whole table (EDGE_GATEWAY__OPENADR='{...}')
    whole = sources.get(("openadr",))
    env = {key: sources.get(("openadr", key), whole) for key in OpenadrConfig.model_fields}
    env = {key: var for key, var in env.items() if var}
    if env:  # on a copy: the default section instance is shared by every config
        openadr = cfg.openadr.model_copy()
        openadr._env = env
        cfg = cfg.model_copy(update={"openadr": openadr})
    return cfg


def load_config(path: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and validate; every failure is a ConfigError whose text names the file and key."""
    if path is None:
        return parse_config({}, "defaults", environ)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:  # e.g. saved as Latin-1 by an editor; TOML is UTF-8 only
        bad = err.object[err.start]
        raise ConfigError(f"{p}: not UTF-8 (byte 0x{bad:02x} at position {err.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    return parse_config(data, str(p), environ)

"""Gateway configuration: the keys, their defaults and their checks. One TOML file, environment variables
override keys (ven.config_load reads them); ven.config_checks looks at the files on the machine. The checks of a
value as typed (text, hosts, URLs, tokens) are ven.config_text's, the warnings ven.config_warnings's.

The key names are a public contract (README documents each one). Validation is strict: an unknown
key or a wrong type is an error that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
                      model_validator)

from .config_checks import looked_for
from .config_text import (UNSENDABLE, fits_a_real, host_port, not_typed, typed_text, unsendable,
                          check_bacnet_address, check_proxy_url, check_vtn_url, is_loopback_host, shown_url)
from .config_warnings import GatewayWarnings, HttpWarnings, OpenadrWarnings


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator: a key (or a file it names) to edit."""


class StartBlocked(ConfigError):
    """What the configuration names is sound but not to be had now (a port another program holds, a host name the
    resolver cannot answer yet): it may clear without an edit, so `run` exits with the status a service manager
    restarts (75), not a configuration error's (78), which no restart mends."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# a TOML array (a list) for a key kept as a tuple, the sections being frozen; strict mode takes no list for one
_LISTED = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)


# holidays = [2025-12-25], unquoted: a TOML date, which the installer meant as the day it reads as
_TOML_DATES = BeforeValidator(lambda v: [d.isoformat() if type(d) is datetime.date else d for d in v]
                              if isinstance(v, list) else v)


@dataclass(frozen=True)
class Floor:
    """Marks a period's `ge` bound as a floor 0.4.5 added: releases before it took any value above 0, and a site's
    config holding one under the floor failed at start, its demand response with it. ven.config_load raises such a
    value to the floor with a warning saying `why`; 0, a negative value or a non-number is still an error."""
    why: str


def as_written(info: ValidationInfo, section: str, key: str, used: float) -> str:
    """A floored key's value for an error naming it, as the file or variable has it. A check across keys sees the
    floor ven.config_load raised it to, which is in no file: "retry_max_seconds (0.2)" of a file saying 0.1 sent the
    installer looking for a value that is not there."""
    written = (info.context or {}).get("written", {}).get((section, key))
    return f"{used:g}" if written is None else f"{written:g}, under its floor of {used:g}"


@functools.cache
def floors() -> dict[tuple[str, str], tuple[float, str]]:
    """(section, key) -> (the floor, why) of each key marked Floor."""
    out = {}
    for section, field in GatewayConfig.model_fields.items():
        model = field.annotation
        keys = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        for key, sub in keys.items():
            floor = next((m for m in sub.metadata if isinstance(m, Floor)), None)
            if floor is not None:
                out[(section, key)] = (next(m.ge for m in sub.metadata if hasattr(m, "ge")), floor.why)
    return out


# the device's objectName in UTF-8: an I-Have (device and object identifiers, the name's tag and character set: 17
# bytes) or a ReadProperty answer (16 bytes) naming it fits a 480-byte APDU, MS/TP's largest, with room to spare.
# A longer name (releases before 0.4.5 took one) is cut to it at load, with a warning (ven.config_load)
DEVICE_NAME_MAX_BYTES = 450
DEVICE_NAME_WHY = "an I-Have naming it must fit one 480-byte APDU, as a BAS behind an MS/TP router receives it"


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

        typed_text(v)
        size = len(v.encode("utf-8"))
        if size > DEVICE_NAME_MAX_BYTES:
            # served whole in an I-Have (unconfirmed: never segmented) and a ReadProperty answer: 2,000 characters
            # went out as a 2 KB I-Have, which no BACnet/IP network carries (1476 bytes at most), and a BAS behind
            # an MS/TP router (480 bytes) could neither find nor read the device by its name
            raise ValueError(f"is {size} bytes in UTF-8: at most {DEVICE_NAME_MAX_BYTES} ({DEVICE_NAME_WHY})")
        if v in TAKEN_NAMES:
            raise ValueError(f"{v!r} is the name of one of the device's objects (a BACnet device's object names "
                             f"are unique); choose another")
        return v

    @field_validator("input_min_kw", "input_max_kw")
    @classmethod
    def _real(cls, v: float) -> float:
        # input-power-meter serves them as minPresValue / maxPresValue: beyond a Real they read as infinite, and
        # a write of 3.4e38 (many devices' "no data") was taken
        return fits_a_real(v)

    @field_validator("bbmd_address")
    @classmethod
    def _bbmd(cls, v: str) -> str:
        if not v:
            return v
        try:    # the default port added here is not shown: the error said "got ' 10.0.0.1:47808'" of " 10.0.0.1"
            host = host_port(v if ":" in v else f"{v}:47808", "bbmd_address").rpartition(":")[0]
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
    # a read through an MS/TP router takes 2-25 ms, more with its retries: 0.001 s ran reads back to back, 33 a
    # second each a commit to storage.path, at 40 % of a core (helper config47)
    poll_seconds: Annotated[float, Floor(
        "a meter read takes milliseconds to seconds (through a router, over MS/TP): faster, reads run back to back, "
        "each a write to storage.path")] = Field(10.0, ge=0.1, le=86400)
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
        return host_port(v, "router") if v else v

    @field_validator("units")
    @classmethod
    def _units(cls, v: str) -> str:
        from bacnet_api.meter_units import check_configured  # the check the meter reader applies

        return check_configured(v) if v else v


class OpenadrConfig(_Section, OpenadrWarnings):
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
    # a refused connection fails at once: 0.001 s asked the VTN to register hundreds of times a second
    retry_min_seconds: Annotated[float, Floor(
        "a refused registration fails at once: sooner, the VTN is asked again and again")] = Field(
        1.0, ge=0.05, le=86400)
    retry_max_seconds: Annotated[float, Floor(
        "a refused registration fails at once: sooner, the VTN is asked more than 5 times a second while it is "
        "down")] = Field(60.0, ge=0.2, le=86400)
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
        return typed_text(v)

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
        return check_vtn_url(v)

    @property
    def proxy_shown(self) -> str:
        return shown_url(self.proxy)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str) -> str:
        return check_proxy_url(v)

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
    def _retry_bounds(self, info: ValidationInfo) -> "OpenadrConfig":
        if self.retry_min_seconds > self.retry_max_seconds:
            # a floor only raises: only a pair the file has the wrong way round fails, said as the file has it
            low, high = (as_written(info, "openadr", key, getattr(self, key))
                         for key in ("retry_min_seconds", "retry_max_seconds"))
            raise ValueError(f"retry_min_seconds ({low}) must not exceed retry_max_seconds ({high})")
        return self


class StorageConfig(_Section):
    path: str = "var/gateway.sqlite"
    # a file that will not open or take writes, tried again; 0.001 s spent a third of a core reopening it
    retry_seconds: Annotated[float, Floor(
        "reopening a file that will not open takes milliseconds: sooner, the gateway does little else")] = Field(
        10.0, ge=0.2, le=3600)
    # how long every part must write in a row before the log says a fault is over: a disk that flaps is one fault;
    # doubled for a fault that comes back soon (bacnet_api/settle.py). 0: at the first write
    settle_seconds: float = Field(60.0, ge=0, le=86400)
    # key -> the EDGE_GATEWAY__* variable that set it: README's install step sets path in one, and an error naming
    # only storage.path sent the operator to a config file that does not hold it
    _env: dict[str, str] = PrivateAttr(default_factory=dict)

    def named(self, key: str) -> str:
        """The key as the operator should look for it: "storage.path", or "storage.path (from VAR)"."""
        var = self._env.get(key)
        return f"storage.{key} (from {var})" if var else f"storage.{key}"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # "" is Path("."), the working directory: every part would fail to open it and retry forever
        if v.strip():
            typed_text(v)
        if not v.strip() or v.endswith("/") or Path(v).name in ("", ".", ".."):
            raise ValueError(f"must name a SQLite file, e.g. /var/lib/edge-gateway/gateway.sqlite, got {v!r}")
        return v


class HttpConfig(_Section, HttpWarnings):
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
        if not path or not isinstance(path, str) or not_typed(path):
            return data     # unset, not a string, or no file name: the field's own check says so
        if data.get("token"):
            raise ValueError("set token or token_file, not both")
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            # relative: from the working directory, which is / under systemd, not where the operator stands
            raise ValueError(f"token_file {looked_for(path)}: {getattr(err, 'strerror', None) or err}") from None
        if not token:
            raise ValueError(f"token_file {path} is empty")
        if unsendable(token):
            raise ValueError(f"token_file {path} holds {UNSENDABLE}")
        return {**data, "token": token}

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return host_port(v, "address")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, v: str) -> str:
        return typed_text(v)

    @field_validator("token")
    @classmethod
    def _sendable(cls, v: str) -> str:
        # a line break inside (a token file written with one) was taken, and no HTTP client can send it (helper
        # verify40)
        if unsendable(v):
            raise ValueError(f"holds {UNSENDABLE}")
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


class ForecasterConfig(_Section):
    source: Literal["auto", "bacnet_input", "meter"] = "auto"
    # a cycle takes 5-10 ms of CPU here (more on a small box): 0.001 s ran them back to back, 80 % of a core and a
    # commit each
    cycle_seconds: Annotated[float, Floor(
        "a forecast cycle takes milliseconds of CPU and a write to storage.path: faster, they run back to "
        "back")] = Field(60.0, ge=0.05, le=86400)
    horizons_minutes: Annotated[tuple[int, int], _LISTED] = (15, 60)
    slope_minutes: int = Field(5, ge=2, le=1440)
    high_load_kw: float | None = None
    low_load_kw: float | None = None
    threshold_days: float = Field(14.0, ge=1, le=366)  # percentiles need a day of 15-min demands (DemandForecaster)
    hysteresis_fraction: float = Field(0.03, ge=0, lt=0.5)
    min_on_minutes: float = Field(15.0, ge=0, le=1440)
    min_off_minutes: float = Field(15.0, ge=0, le=1440)
    arm_fraction: float = Field(0.1, ge=0, le=1000)
    # one minute of memory per minute of history. Under a day (0.5, 0.001) no fit ever had the complete 15-minute
    # demands it needs, and the log blamed the history held ("2017 minutes of history give too few"): persistence
    # served for good
    history_days: Annotated[float, Floor(
        "the model learns from whole days of 15-minute demands: under a day no fit has enough, and persistence "
        "serves for good")] = Field(35.0, ge=1, le=366)
    # a fit takes seconds of CPU (a minute at idle priority on a busy box): 0.001 (0.06 s) started one fit
    # process after another, each up to 150 MB (bench/loop_stall.py refits every 2 minutes on purpose, and
    # bench/memory_startup.py every 30 s to fit an hour's refits into a minute: 1 stopped its gateway at the start)
    retrain_minutes: Annotated[float, Floor(
        "a fit takes seconds of CPU, a minute on a busy small box: sooner, one fit process follows another")] = Field(
        1440.0, ge=0.5, le=525600)
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

    @field_validator("horizons_minutes", mode="before")
    @classmethod
    def _two_horizons(cls, v):
        # [15] said "forecaster.horizons_minutes.1: Field required"
        if isinstance(v, (list, tuple)) and len(v) != 2:
            raise ValueError(f"must be two increasing positive minute counts up to 1440, e.g. [15, 60], got {list(v)}")
        return v

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
        return v if v is None else fits_a_real(v)

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


class GatewayConfig(_Section, GatewayWarnings):
    bacnet: BacnetConfig = BacnetConfig()
    meter: MeterConfig = MeterConfig()
    openadr: OpenadrConfig = OpenadrConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    forecaster: ForecasterConfig = ForecasterConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # (section, key) -> the sentence saying what ven.config_load raised to a floor or cut to fit: said first of the
    # warnings
    _raised: dict[tuple[str, str], str] = PrivateAttr(default_factory=dict)

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

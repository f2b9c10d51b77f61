"""Gateway configuration: one TOML file, environment variables override keys.

The key names are a public contract (README documents each one). Validation is strict: an unknown
key or a wrong type is an error that names the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "EDGE_GATEWAY__"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must look like host:port, got {value!r}")
    return value


class BacnetConfig(_Section):
    address: str = "127.0.0.1/8:47808"
    device_id: int = Field(500001, ge=0, le=4194302)
    device_name: str = Field("EdgeGateway", min_length=1)
    input_min_kw: float = -100000.0
    input_max_kw: float = 100000.0

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        ip, sep, port = v.partition(":")
        if not sep or not port.isdigit() or "/" not in ip:
            raise ValueError(f"must look like ip/mask:port, e.g. 127.0.0.1/8:47808, got {v!r}")
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
    poll_seconds: float = Field(10.0, gt=0)
    timeout_seconds: float = Field(5.0, gt=0)

    @field_validator("object")
    @classmethod
    def _object(cls, v: str) -> str:
        kind, _, inst = v.replace(":", " ").partition(" ")
        if not kind or not inst.strip().isdigit():
            raise ValueError(f"must look like 'analogInput 2', got {v!r}")
        return v

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        return _host_port(v, "router") if v else v


class OpenadrConfig(_Section):
    vtn_url: str = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    ven_name: str = Field("edge-gateway", min_length=1)
    report_resource_id: str = Field("main-meter", min_length=1)
    telemetry_seconds: float = Field(10.0, gt=0)
    queue_max_days: float = Field(7.0, gt=0)
    retry_min_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    cert: str = ""
    key: str = ""
    passphrase: str = ""
    ca_file: str = ""
    vtn_fingerprint: str = ""

    @field_validator("vtn_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> "OpenadrConfig":
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key must be given together")
        return self


class StorageConfig(_Section):
    path: str = "var/gateway.sqlite"


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
    cycle_seconds: float = Field(60.0, gt=0)
    horizons_minutes: tuple[int, int] = (15, 60)
    slope_minutes: int = Field(5, ge=2)
    high_load_kw: float | None = None
    low_load_kw: float | None = None
    threshold_days: float = Field(14.0, gt=0)
    hysteresis_fraction: float = Field(0.03, ge=0, lt=0.5)
    min_on_minutes: float = Field(15.0, ge=0)
    min_off_minutes: float = Field(15.0, ge=0)
    arm_fraction: float = Field(0.1, ge=0)
    history_days: float = Field(35.0, gt=0)
    retrain_minutes: float = Field(1440.0, gt=0)
    input_stale_seconds: float = Field(300.0, gt=0)
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
        if not 0 < v[0] < v[1]:
            raise ValueError(f"must be two increasing positive minute counts, e.g. [15, 60], got {list(v)}")
        return v

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


def _env_value(raw: str) -> object:
    """Read an environment value as a TOML literal (numbers, booleans, lists), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict, environ: Mapping[str, str]) -> dict:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a table key")
        node[path[-1]] = _env_value(raw)
    return data


def _describe(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"].endswith("_type"):
            msg = f"{msg} (got {type(e['input']).__name__} {e['input']!r})"
        lines.append(f"{origin}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, origin: str = "config", environ: Mapping[str, str] | None = None) -> GatewayConfig:
    data = _apply_env(dict(data), os.environ if environ is None else environ)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin)) from None


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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    return parse_config(data, str(p), environ)

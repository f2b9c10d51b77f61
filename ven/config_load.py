"""Reading a configuration: the TOML file, the EDGE_GATEWAY__* variables over it, and the errors that name the
file or variable and the key.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ValidationError

from . import __version__
from .config import (DEVICE_NAME_MAX_BYTES, DEVICE_NAME_WHY, ConfigError, GatewayConfig, OpenadrConfig,
                     StorageConfig, floors)
from .config_text import typed_text

ENV_PREFIX = "EDGE_GATEWAY__"


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
    except (tomllib.TOMLDecodeError, RecursionError):   # the text then, which the key's check refuses
        return raw


# the prefix as it gets misspelt: a missing or doubled underscore, a plural, lower case
_LIKE_PREFIX = re.compile(r"edge_*gateways?_*", re.IGNORECASE)


def _misspelt_prefix(name: str) -> None:
    # EDGE_GATEWAY_METER__POLL_SECONDS (one underscore) or a lower-case name was not read and not said: check-config
    # said ok and the setting was not applied, where a misspelt key after the right prefix is an error
    stem = ENV_PREFIX.rstrip("_")
    head = _LIKE_PREFIX.match(name)
    # EDGE_GATEWAY<anything>, as before; a squashed or plural prefix (EDGEGATEWAY__, EDGE__GATEWAY__) only with a
    # __ after it, as the gateway's variables have: another program's EDGEGATEWAY_HOME is not one
    if not head or name == stem or not (name.upper().startswith(stem) or "__" in name[head.end() - 2:]):
        return
    rest = name[head.end():].upper()
    low = rest.lower()
    if "__" not in rest and not any(low == part or low.startswith(f"{part}_") for part in GatewayConfig.model_fields):
        # another program's variable that merely starts alike (EDGE_GATEWAY_VERSION, set by a derived image): it
        # stopped the gateway; one naming a section or key of ours (EDGE_GATEWAY_METER_POLL_SECONDS) still does
        return
    meant = f"; did you mean {ENV_PREFIX}{rest}?" if "__" in rest else ""
    raise ConfigError(f"{name}: not read: the variables are {ENV_PREFIX}<SECTION>__<KEY>, in upper case with two "
                      f"underscores between the parts{meant}")


def _apply_env(data: dict, environ: Mapping[str, str]) -> tuple[dict, dict[tuple[str, ...], str]]:
    """Overlay the EDGE_GATEWAY__* variables; also return which key each variable set."""
    sources: dict[tuple[str, ...], str] = {}
    # a table's variable first: one naming a key of it wins, whatever the environment's order
    for name, raw in sorted(environ.items(), key=lambda item: item[0].count("__")):
        if not name.startswith(ENV_PREFIX):
            _misspelt_prefix(name)
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            raise ConfigError(f"{name}: names no key (use {ENV_PREFIX}<SECTION>__<KEY>)")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a table key")
        value = _env_value(raw, _field_type(path))
        if isinstance(value, dict):
            # a table (EDGE_GATEWAY__METER='{poll_seconds = 5}') sets its keys: replacing the file's table put
            # every other key of it back to its default, meter.router among them, unsaid (helper readme40). An error
            # in a key it does not hold is the file's (helper verify40)
            sources.update({(*path, key): name for key in value})
            if isinstance(node.get(path[-1]), dict):
                value = {**node[path[-1]], **value}
        else:
            sources[tuple(path)] = name
        node[path[-1]] = value
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
    if parent and (typed,) in keys:
        # log_level appended at the end of the file lands in its last section: it said "has no such key"
        return (f"; {typed} goes at the top of the file, above the first [section] line (a key below one belongs to "
                f"that section)")
    elsewhere = [k for k in keys if k[-1] == typed and len(k) > 1]
    if len(elsewhere) == 1:
        return f"; did you mean {'.'.join(elsewhere[0])} (under [{elsewhere[0][0]}])?"
    if elsewhere:   # e.g. address, in [bacnet], [meter] and [http]
        return f"; did you mean {' or '.join('.'.join(k) for k in elsewhere)}?"
    return ""


# pydantic's wording of a range check leaves out the value that failed it
_BOUND_TYPES = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"}


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _how_to_write(e: dict) -> str:
    """What to write for a value of the wrong TOML type that reads as a right one: `power_hertz = "60"` said
    "Input should be 50 or 60 (got '60')", and `enabled = "false"` or a variable's False "a valid boolean", neither
    saying what to change."""
    kind, value = e["type"], e["input"]
    if kind == "literal_error" and isinstance(value, str):
        if repr(value.upper()) in str(e.get("ctx", {}).get("expected", "")):
            return ": write it in upper case"
        kind = "int_type" if _is_number(value) else kind     # 50 or 60, quoted
    if kind == "bool_type" and isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return ": write true or false, in lower case, without quotes"
    if kind == "bool_type" and type(value) is int and value in (0, 1):
        return ": write true or false"
    if kind in ("int_type", "float_type") and isinstance(value, str) and _is_number(value):
        return ": write the number without quotes"
    if kind == "string_type" and type(value) in (int, float):
        return ": put it in quotes"     # a PIN, a name of digits
    if kind == "tuple_type" and isinstance(value, str):
        # write_from = "10.0.0.5, 10.0.0.6": the list as an installer would say it, written the way TOML takes it
        items = [part for part in re.split(r"[,;\s]+", value) if part]
        return f": write it as [{', '.join(p if _is_number(p) else json.dumps(p) for p in items)}]"
    return ""


def _describe(err: ValidationError, origin: str, sources: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        secret = tuple(e["loc"]) in SECRETS
        if e["type"] == "extra_forbidden":
            # no near match: after a rollback, the likeliest is a key the newer version added
            msg = "unknown key" + (_did_you_mean(tuple(str(p) for p in e["loc"])) or
                                   f"; edge-gateway {__version__} has no such key: remove it (one a newer version "
                                   "added, after a downgrade?) or correct it")
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")   # the validators' own sentence says what is wrong
        elif "input" in e and e["type"].endswith("_type"):
            got = f"(got {type(e['input']).__name__} {'not shown: a secret' if secret else repr(e['input'])})"
            if e["type"] == "model_type" and tuple(e["loc"]) in sources:
                # EDGE_GATEWAY__METER=5: "put its keys under a [meter] line" sent the operator to a file
                var = f"{ENV_PREFIX}{key.upper()}"
                msg = (f"must be a table: set its keys with {var}__<KEY>, or an inline table "
                       f"{var}='{{key = value}}' {got}")
            elif e["type"] == "model_type":   # pydantic says "a valid dictionary or instance of MeterConfig"
                msg = f"must be a table: put its keys under a [{key}] line {got}"
            else:   # a TOML file has arrays, not tuples
                msg = f"{msg.replace('a valid tuple', 'a list, e.g. [...]')} {got}{_how_to_write(e)}"
        elif e["type"] == "too_long":
            msg = msg.replace("Tuple", "List").replace(" after validation", "")
        elif e["type"] in _BOUND_TYPES and not secret:
            msg = f"{msg} (got {e['input']!r}){_how_to_write(e)}"
            floor = floors().get(tuple(e["loc"]))
            if e["type"] == "greater_than_equal" and floor:
                msg = f"{msg}: {floor[1]}"
        # a check across sections (GatewayConfig's own) names its keys in its sentence
        where = f"{key}: " if e["loc"] else ""
        lines.append(f"{_origin_of(tuple(e['loc']), origin, sources)}: {where}{msg}")
    return "\n".join(lines)


def _is_real(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _raise_to_floors(data: dict, sources: Mapping[tuple[str, ...], str],
                     written: dict[tuple[str, str], object]) -> dict[tuple[str, str], str]:
    """Raise each period under its floor to it, and cut a device name longer than an APDU carries, in `data`; one
    warning for each, and the value given in `written`. Releases before 0.4.5 took them: refused, an upgrade stopped
    the site's gateway (its demand response with it) until someone edited the file. What no release took (0,
    negative, not a number) is left to the model, which refuses it."""
    said = {}

    def named(path: tuple[str, str]) -> str:
        var = next((name for where, name in sources.items() if path[:len(where)] == where), None)
        return f"{'.'.join(path)} (from {var})" if var else ".".join(path)

    for (section, key), (floor, why) in floors().items():
        table = data.get(section)
        v = table.get(key) if isinstance(table, dict) else None
        if _is_real(v) and 0 < v < floor:
            table[key], written[(section, key)] = floor, v
            unit = {"seconds": " s", "minutes": " min", "days": " days"}.get(key.rpartition("_")[2], "")
            said[(section, key)] = (f"{named((section, key))} {v:g} is under its floor of {floor:g}{unit}: "
                                    f"{floor:g} is used ({why}); set {floor:g} or more")
    bacnet = data.get("bacnet")
    name = bacnet.get("device_name") if isinstance(bacnet, dict) else None
    if isinstance(name, str) and len(name.encode("utf-8")) > DEVICE_NAME_MAX_BYTES:
        # on a character's boundary; a blank the cut leaves at the end would be refused as one typed there
        cut = name.encode("utf-8")[:DEVICE_NAME_MAX_BYTES].decode("utf-8", "ignore").rstrip()
        try:
            typed_text(cut)
        except ValueError:
            # refused as the file has it (the model says why): the error quoted the cut name, which is in no file
            return said
        bacnet["device_name"] = cut
        said[("bacnet", "device_name")] = (
            f"{named(('bacnet', 'device_name'))} is {len(name.encode('utf-8'))} bytes in UTF-8, more than the "
            f"{DEVICE_NAME_MAX_BYTES} allowed ({DEVICE_NAME_WHY}): its first {len(cut)} characters are used, "
            f"{name[:12]!r} to {cut[-12:]!r}; shorten it")
    return said


def parse_config(data: dict, origin: str = "config", environ: Mapping[str, str] | None = None) -> GatewayConfig:
    # deep copy: the overlay writes into nested tables, which belong to the caller
    data, sources = _apply_env(copy.deepcopy(data), os.environ if environ is None else environ)
    written: dict[tuple[str, str], object] = {}
    raised = _raise_to_floors(data, sources, written)
    try:
        # `written`: a check across keys names a raised value as the file has it (config.as_written)
        cfg = GatewayConfig.model_validate(data, context={"written": written})
    except ValidationError as err:
        raise ConfigError(_describe(err, origin, sources)) from None
    # the variable that set each key, one naming it or a table holding it (EDGE_GATEWAY__OPENADR='{...}')
    for name, section in (("openadr", OpenadrConfig), ("storage", StorageConfig)):
        env = {key: sources.get((name, key)) for key in section.model_fields}
        env = {key: var for key, var in env.items() if var}
        if env:  # on a copy: the default section instance is shared by every config
            copied = getattr(cfg, name).model_copy()
            copied._env = env
            cfg = cfg.model_copy(update={name: copied})
    cfg._raised = raised
    return cfg


def _quoted_line(text: str, error: str) -> str:
    """The line tomllib names, quoted: its message names no key ("Cannot overwrite a value" for one given twice)."""
    found = re.search(r"\(at line (\d+), column \d+\)$", error)
    lines = text.splitlines()
    if not found or not 0 < int(found.group(1)) <= len(lines):
        return ""
    number = int(found.group(1))
    line = lines[number - 1].strip()
    # inside a multi-line string the line is part of a value: whose value, the line that opened it says
    owner = _multiline_opened_by(lines[:number - 1]) or line
    key = owner.partition("=")[0].strip().strip("\"'")
    secrets = {name for _, name in SECRETS}
    # the error goes to the journal; a secret may be on the line as its key, or inside an inline table
    if key.rpartition(".")[2].lower() in secrets or re.search(
            rf"\b({'|'.join(secrets)})[\"']?\s*=", owner, re.IGNORECASE):
        line = f"{key} = ... (a secret: not shown)"
    line = re.sub(r"(//[^/@:\s]*:)[^/@\s]*@", r"\1***@", line)   # a URL's password, as shown_url does
    twice = " (a key given twice?)" if error.startswith("Cannot overwrite a value") else ""
    return f": {line[:120]!r}{twice}" if line else ""


def _multiline_opened_by(lines: list[str]) -> str | None:
    """The line that opened a multi-line string still open after these lines, or None."""
    opened = None
    for line in lines:
        at = 0
        while True:
            if opened is None:
                found = re.compile(r'"""|\'\'\'').search(line, at)
                if not found:
                    break
                opened, delimiter, at = line.strip(), found.group(), found.end()
            else:
                end = line.find(delimiter, at)
                if end < 0:
                    break
                opened, at = None, end + 3
    return opened


def load_config(path: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and validate; every failure is a ConfigError whose text names the file and key."""
    if path is None:
        return parse_config({}, "defaults", environ)
    p = Path(path)
    try:
        # utf-8-sig: Notepad and other Windows tools start a UTF-8 file with a byte-order mark, which TOML does not
        # allow and no editor shows ("Invalid statement (at line 1, column 1)" for a line that looks right)
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        # relative, it is taken from the working directory: a unit's WorkingDirectory= (/ by default), a container's
        # WORKDIR, not the directory the operator reads the error in
        where = "" if p.is_absolute() else f" (looked for in {Path.cwd()})"
        raise ConfigError(f"{p}: no such file{where}") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:  # e.g. saved as Latin-1 by an editor; TOML is UTF-8 only
        bad = err.object[err.start]
        raise ConfigError(f"{p}: not UTF-8 (byte 0x{bad:02x} at position {err.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}{_quoted_line(text, str(err))}") from None
    except RecursionError:  # tomllib parses nesting by recursion: thousands of [ were a traceback
        raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, str(p), environ)

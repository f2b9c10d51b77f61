"""README is the operator's reference: every configuration key and every BACnet point is documented there; what
README and docs/*.md say of files, metrics, commands and each other's headings is true."""
from __future__ import annotations

from pathlib import Path

from bacnet_api.points import POINTS
from ven.config import Floor, GatewayConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# the reference beyond README, by reader: each file as the repository names it
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
ALL_DOCS = {"README.md": README, **DOCS}
EVERY_DOC = "\n\n".join(ALL_DOCS.values())


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            yield from _keys(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_config_key_is_documented():
    missing = [k for k in _keys(GatewayConfig) if f"`{k}`" not in README]
    assert not missing, f"README lacks configuration keys: {missing}"


def test_every_point_is_in_the_point_table():
    for p in POINTS:
        assert f"| {p.object_id} | {p.name} |" in README, p.name


def test_the_point_table_gives_each_points_access_units_state_texts_and_description():
    # the BAS programmer maps points from this table: a unit or a state text changed in bacnet_api/points.py
    # and not here is a point programmed wrong on site
    import re

    rows = {cells[0]: cells for line in README.splitlines() if line.startswith(("| analogValue ", "| binaryValue "))
            for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}
    wrong = {}
    for p in POINTS:
        obj, name, access, units, texts, meaning = rows[p.object_id]
        shown = (name, access, re.sub(r" \(.*\)$", "", units) or None, texts or None, meaning)
        real = (p.name, p.access, p.units, " / ".join(p.texts) if p.texts else None, p.description)
        if shown != real:
            wrong[p.object_id] = (shown, real)
    assert not wrong, f"README's point table differs from bacnet_api/points.py (shown, real): {wrong}"


def test_every_metric_the_readme_and_docs_name_is_exposed():
    # an operator writes alert rules from these names: a renamed metric must fail here, not in Prometheus
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from ven.metrics import Metrics

    families = list(text_string_to_metric_families(Metrics().render().decode()))
    # a histogram by its family's name, and a labelled series that has no sample before its first value
    exposed = {s.name for f in families for s in f.samples} | {f.name for f in families if f.type != "counter"}
    named = set(re.findall(r"\bedge_gateway_[a-z_]+[a-z]", EVERY_DOC))
    assert named and not named - exposed, sorted(named - exposed)


def _anchors(text: str) -> set[str]:
    # GitHub's anchors: the heading in lower case, spaces to hyphens, punctuation but hyphens dropped
    import re

    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_link_within_the_readme_and_docs_goes_to_a_file_and_one_of_its_headings():
    # `#cov` in its own file, `docs/bacnet.md#cov` from README, `../README.md#configuration` from docs/: a heading
    # renamed or moved to another file must fail here, not leave the reader at the top of a page
    import posixpath
    import re

    broken, linked = [], set()
    for name, text in ALL_DOCS.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue    # http:, https:, mailto: are not the repository's
            path, _, anchor = target.partition("#")
            to = posixpath.normpath(posixpath.join(posixpath.dirname(name), path)) if path else name
            linked.add(to)
            if not (ROOT / to).exists():
                broken.append((name, target, "no such file"))
            elif anchor and (to not in ALL_DOCS or anchor not in _anchors(ALL_DOCS[to])):
                broken.append((name, target, "no such heading"))
    assert re.findall(r"\]\(#([^)]+)\)", README), "no contents links"
    assert not broken, broken
    assert not set(DOCS) - linked, f"docs README does not lead to: {sorted(set(DOCS) - linked)}"


def test_every_file_the_readme_and_docs_name_exists():
    import re

    named = set(re.findall(r"`((?:examples|docker|bench|docs|ven|bacnet_api|forecaster|tests)/[\w./-]+\w)`", EVERY_DOC))
    missing = [n for n in sorted(named) if not (ROOT / n).exists()]
    assert named and not missing, f"README or docs/ name files the repository does not have: {missing}"


def test_example_config_shows_every_key():
    import re

    example = (Path(__file__).resolve().parent.parent / "examples" / "gateway.toml").read_text()
    missing = [k for k in _keys(GatewayConfig)
               if not re.search(rf"^#? ?{k.rpartition('.')[2]} =", example, re.M)]
    assert not missing, f"examples/gateway.toml lacks: {missing}"


def _table(header: str, text: str = README) -> str:
    """The table of README's Configuration section whose first two columns are `key` and `header`."""
    import re

    section = text.partition("\n## Configuration\n")[2].partition("\n## ")[0]
    start = re.search(rf"^\|[ \t]*key[ \t]*\|[ \t]*{header}[ \t]*\|.*\n", section, re.M)
    assert start, f"README's Configuration section has no table of key and {header}"
    return re.match(r"(?:\|.*\n?)*", section[start.end():]).group(0)


def _config_table(text: str = README) -> dict[str, str]:
    """key -> the default column of README's configuration reference table."""
    import re

    return dict(re.findall(r"^\|[ \t]*`([a-z_.]+)`[ \t]*\|[ \t]*([^|]*?)[ \t]*\|", _table("default", text), re.M))


def _allowed_table(text: str = README) -> dict[str, str]:
    """key -> the allowed column of README's table of the values each key takes (a row may name several keys)."""
    import re

    rows = re.findall(r"^\|([^|]*)\|[ \t]*([^|]*?)[ \t]*\|", _table("allowed", text), re.M)
    return {key: allowed for keys, allowed in rows for key in re.findall(r"`([a-z_.]+)`", keys)}


def _allowed_phrases(key: str) -> list[str]:
    """How README must word the bounds and choices ven/config.py enforces on `key`."""
    import typing

    model, *path = [GatewayConfig, *key.split(".")]
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    field = model.model_fields[path[-1]]
    num = lambda x: f"{x:g}" if x != int(x) else str(int(x))   # noqa: E731
    bound = {a: getattr(m, a) for m in field.metadata for a in ("ge", "gt", "le", "lt", "min_length") if hasattr(m, a)}
    phrases = []
    if any(isinstance(m, Floor) for m in field.metadata):
        # taken above 0 (as before 0.4.5), and raised to the floor with a warning
        phrases.append(f"over 0, up to {num(bound['le'])}; *floor* {num(bound['ge'])}")
    elif "ge" in bound and "le" in bound:
        phrases.append(f"{num(bound['ge'])}..{num(bound['le'])}")
    elif "gt" in bound and "le" in bound:
        phrases.append(f"over {num(bound['gt'])}, up to {num(bound['le'])}")
    elif "ge" in bound and "lt" in bound:
        phrases.append(f"{num(bound['ge'])} to under {num(bound['lt'])}")
    elif bound.keys() - {"min_length"}:
        phrases.append(f"a wording for {bound}")   # a new kind of bound: give it one here and in README
    if "min_length" in bound:
        phrases.append(f"at least {bound['min_length']} character")
    if typing.get_origin(field.annotation) is typing.Literal:
        phrases += [f"`{v}`" if v != "" else '`""`' for v in typing.get_args(field.annotation)]
    return phrases


def test_the_allowed_values_table_gives_the_bounds_and_choices_the_code_enforces():
    # a bound changed in ven/config.py (or a new bounded key) without README: the operator finds it by trial
    table, keys = _allowed_table(), list(_keys(GatewayConfig))
    assert not set(table) - set(keys), f"no such key: {sorted(set(table) - set(keys))}"
    wrong = {}
    for key in keys:
        phrases = _allowed_phrases(key)
        missing = [p for p in phrases if p not in table.get(key, "")]
        if missing:
            wrong[key] = (table.get(key, "no row"), missing)
    assert not wrong, f"README's allowed values differ from ven/config.py (shown, missing): {wrong}"


def _default(key: str):
    value = GatewayConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def test_the_configuration_table_has_one_row_per_key_with_its_real_default():
    import tomllib

    table = _config_table()
    keys = list(_keys(GatewayConfig))
    assert sorted(table) == sorted(keys), (f"no row: {sorted(set(keys) - set(table))}; "
                                          f"no such key: {sorted(set(table) - set(keys))}")
    wrong = {}
    for key, shown in table.items():
        doc = None if shown == "unset" else tomllib.loads(f"v = {shown.strip('`')}")["v"]
        real = _default(key)
        if doc != real or isinstance(doc, bool) != isinstance(real, bool):
            wrong[key] = (shown, real)
    assert not wrong, f"README default differs from ven/config.py (shown, real): {wrong}"


# values examples/gateway.toml sets on purpose, each said so in its comment
EXAMPLE_NOT_DEFAULT = {"meter.router", "meter.units", "forecaster.high_load_kw", "forecaster.low_load_kw"}


def test_the_example_config_shows_the_defaults_except_where_it_says_otherwise():
    import re
    import tomllib

    example = (Path(__file__).resolve().parent.parent / "examples" / "gateway.toml").read_text()
    section, wrong = "", {}
    for line in example.splitlines():
        if m := re.match(r"\[(\w+)\]", line):
            section = f"{m.group(1)}."
        elif (m := re.match(r"#? ?(\w+) = (.*?)\s*(#.*)?$", line)) and f"{section}{m.group(1)}" not in EXAMPLE_NOT_DEFAULT:
            key = f"{section}{m.group(1)}"
            shown = tomllib.loads(f"v = {m.group(2)}")["v"]
            if shown != _default(key):
                wrong[key] = (m.group(2), _default(key))
    assert not wrong, f"examples/gateway.toml says the default is (shown, real): {wrong}"


def _commands_in_readme(text: str = README) -> list[tuple[str, str]]:
    """(subcommand, the rest of its command line) for each `edge-gateway SUBCOMMAND` in README's code."""
    import re

    from bacnet_api.services import VENDOR_NAME

    fenced = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)   # not the mermaid diagram's participants
    # a code span may wrap over lines, never past its paragraph: paired wrong, prose is read as code
    inline = re.findall(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    inline = [code for code in inline if code != VENDOR_NAME]
    found = []
    for code in fenced + inline:
        code = re.sub(r"#[^\n]*", "", code).replace("\\\n", " ")
        found += re.findall(r"(?:^|[\s/])edge-gateway\s+([a-z][a-z-]*)([^\n&;|]*)", code)
    return found


def test_every_command_the_readme_shows_exists_with_the_options_it_gives():
    import re

    from ven.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    shown = [(name, *c) for name, text in ALL_DOCS.items() for c in _commands_in_readme(text)]
    unknown = sorted({(name, sub) for name, sub, _ in shown if sub not in subparsers})
    assert not unknown, f"README or docs/ run commands the CLI does not have: {unknown}"
    bad = sorted({(name, sub, opt) for name, sub, rest in shown for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest)
                  if opt not in subparsers[sub]._option_string_actions})
    assert not bad, f"README or docs/ give options these commands do not take: {bad}"
    # a newcomer meets every command in README itself
    unmentioned = sorted(set(subparsers) - {sub for name, sub, _ in shown if name == "README.md"})
    assert not unmentioned, f"README never shows these commands: {unmentioned}"


def test_the_readme_parsers_read_a_reflowed_paragraph_and_an_aligned_table():
    # an inline command re-wrapped over three lines was skipped, and its backticks then paired prose as code;
    # a table a formatter pads to align its columns lost every row
    text = ("Check it: `sudo -u gateway env\n   X=1 /opt/edge-gateway/bin/edge-gateway\n   check-config /etc/gw.toml`."
            " Then the edge-gateway service\nstarts (`systemctl start edge-gateway`).\n")
    assert [sub for sub, _ in _commands_in_readme(text)] == ["check-config"]
    table = "\n## Configuration\n\n| key       | default  | meaning |\n|---|---|---|\n| `log_level` | `\"INFO\"`   | x |\n"
    assert _config_table(table) == {"log_level": '`"INFO"`'}


def test_every_command_line_option_says_what_it_is_and_its_default():
    # a bare "--bacnet-port BACNET_PORT" left a newcomer guessing the protocol, the default and what it serves
    import argparse

    from ven.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    bare, no_default = [], []
    for name, sub in subparsers.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.metavar}"
            if not action.help:
                bare.append(what)
                continue
            shown = formatter._expand_help(action)
            if action.default not in (None, False) and not any(
                    text in shown for text in (str(action.default), f"{action.default:g}"
                                               if isinstance(action.default, float) else str(action.default))):
                no_default.append((what, action.default))
    assert not bare, f"options without a help text: {bare}"
    assert not no_default, f"options whose help does not give their default: {no_default}"


def test_the_replay_synopsis_gives_every_option_forecast_replay_takes():
    # the synopsis is where a technician looks up the replay's options: --stamped was missing from it
    import re

    from ven.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    synopsis = re.search(r"^```sh\nedge-gateway forecast-replay .*?^```", EVERY_DOC, re.M | re.S)
    assert synopsis, "neither README nor docs/ has a forecast-replay synopsis"
    missing = [o for a in subparsers["forecast-replay"]._actions for o in a.option_strings[-1:]
               if o not in ("--help",) and not re.search(rf"{o}(?![\w-])", synopsis.group(0))]
    assert not missing, f"the forecast-replay synopsis lacks: {missing}"

"""/metrics as an operator's Prometheus reads it, from a running gateway with real peers on loopback (a VTN,
a routed meter, a BAS): the exposition parsed by prometheus_client's own parser follows the conventions an
alert rule relies on, the VTN's outage and the telemetry backlog it leaves show from start to end, and every
metric examples/prometheus-alerts.yml uses is one the gateway exposes."""
from __future__ import annotations

import math
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bacnet_api import points as P
from test_gateway import system  # noqa: F401 - shared fixture: the gateway with its VTN, meter and a BAS peer
from ven.vtn_server import DemoVtn
from waiting import eventually

pytestmark = pytest.mark.timeout(90)
SYSTEM_TELEMETRY_SECONDS = 2    # the system's report intervals (read by the fixture); the meter is read every 1 s

ALERTS = Path(__file__).parents[1] / "examples" / "prometheus-alerts.yml"
# every label the gateway puts on a series, and the values it may take: none grows with time (an event id
# or a timestamp as a label would make a new series for each, forever)
BOUNDED_LABELS = {"horizon": re.compile(r"(15|60)m"), "model": re.compile(r"forecaster|persistence"),
                  "version": re.compile(r"\S+"), "le": re.compile(r"\S+"),
                  # a job the gateway repeats (BugGuard's name for it): a fixed set, built at the start
                  "what": re.compile(r"[\w .,'()/:-]+")}


@pytest.fixture
async def running(system):
    vtn, _, gw, bas, addr = system
    running = {"vtn": vtn, "gateway": gw, "bas": bas, "addr": addr}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def scrape() -> list:
            async with http.get(gw.http.url + "/metrics") as r:
                assert r.status == 200
                return list(text_string_to_metric_families(await r.text()))
        running["scrape"] = scrape
        await eventually(lambda: gw.vtn.connected and gw.meter.last_good is not None, 15, "connected, meter read")
        try:
            yield running
        finally:
            await running["vtn"].stop()     # the VTN a test started in place of the system's


def values(families) -> dict[str, float]:
    """name{label="value",...} -> value, for each sample."""
    return {s.name + "".join(f'{{{k}="{v}"}}' for k, v in sorted(s.labels.items())): s.value
            for f in families for s in f.samples}


async def test_the_exposition_parses_with_prometheus_client_and_follows_its_conventions(running):
    families = await running["scrape"]()
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    series = [(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples]
    assert len(series) == len(set(series)), "duplicate series"
    # the process's own (memory, CPU, file descriptors), prometheus_client's standard names
    assert {"process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"} <= set(names), names
    assert not [f for f in families if f.name.endswith("_created")], "no <counter>_created series"
    for f in families:
        if f.name.startswith("process_"):
            continue
        assert f.name.startswith("edge_gateway_") and f.documentation, f.name
        assert f.type in ("counter", "gauge", "histogram", "info"), (f.name, f.type)
        if f.type == "counter":
            assert all(s.name == f.name + "_total" for s in f.samples), f.samples
        for s in f.samples:
            for label, value in s.labels.items():
                assert label in BOUNDED_LABELS and BOUNDED_LABELS[label].fullmatch(value), (s.name, label, value)
    counters = {s.name for f in families if f.type == "counter" for s in f.samples}
    first = values(families)

    # before the BAS's first write its age is unknown (NaN: no alert fires on a site whose BAS never writes)
    assert math.isnan(first["edge_gateway_input_age_seconds"])
    # no model before two days of history: persistence serves both horizons
    assert [first[f'edge_gateway_forecast_serving_persistence{{horizon="{h}"}}'] for h in ("15m", "60m")] == [1, 1]
    assert first["edge_gateway_forecast_fit_failing"] == 0     # no fit yet is no failed one
    gw = running["gateway"]
    bas, addr = running["bas"], running["addr"]
    assert await bas.write(addr, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 90.0, priority=8) is None
    await eventually(lambda: gw.forecast.status()["last_input_at"] is not None, 5, "the write seen")
    second = values(await running["scrape"]())
    assert 0 <= second["edge_gateway_input_age_seconds"] < 60 and second["edge_gateway_input_kw"] == 90.0
    for name in counters:       # a counter only goes up
        assert second[name] >= first[name], name
    # the BAS relinquishes the point: no input, where the gauge kept 90 kW flat on the dashboard that charts it
    assert await bas.relinquish(addr, P.BY_NAME[P.INPUT_POWER].object_id, priority=8) is None
    third = values(await running["scrape"]())
    assert math.isnan(third["edge_gateway_input_kw"]) and math.isnan(third["edge_gateway_input_age_seconds"])


async def test_a_vtn_outage_and_the_telemetry_backlog_it_leaves_show_from_start_to_end(running):
    scrape, gw = running["scrape"], running["gateway"]

    def metric_is(name, test):
        async def check():
            return test(values(await scrape())[name])
        return check

    connected, age = "edge_gateway_vtn_connected", "edge_gateway_telemetry_oldest_sample_age_seconds"
    assert await metric_is(connected, lambda v: v == 1)()
    await eventually(lambda: gw.telemetry.status()["delivered"] > 0, 30, "a first delivery")
    # delivered every telemetry interval (2 s): the oldest waiting sample is younger than two of them
    interval = SYSTEM_TELEMETRY_SECONDS
    await eventually(metric_is(age, lambda v: v < 2 * interval), 30, "a short backlog while the VTN takes it")

    await running["vtn"].stop()
    await eventually(metric_is(connected, lambda v: v == 0), 15, "vtn_connected 0")
    # five intervals old, far older than a delivered backlog gets; and the readings (one a second) waiting
    await eventually(metric_is(age, lambda v: v > 5 * interval), 40, "the backlog's age grows while the VTN is away")
    await eventually(metric_is("edge_gateway_telemetry_queue_depth", lambda v: v >= 10), 10, "ten readings waiting")
    # what the VTN's silence was, in counters: polls that failed among those sent, then registrations refused
    await eventually(metric_is("edge_gateway_vtn_registration_failures_total", lambda v: v >= 1), 30,
                     "a failed registration counted")
    during = values(await scrape())
    assert 1 <= during["edge_gateway_vtn_poll_failures_total"] < during["edge_gateway_vtn_polls_total"], during

    running["vtn"] = DemoVtn(port=running["vtn"].port, poll_seconds=1.0)    # the VTN restarted
    await running["vtn"].start()
    await eventually(metric_is(connected, lambda v: v == 1), 30, "vtn_connected 1 again")
    await eventually(metric_is(age, lambda v: v < 2 * interval), 30, "the backlog delivered")


async def test_a_forecast_cycle_failing_on_a_bug_is_a_series_named_until_it_works_again(running):
    # the BAS read the forecast points in fault and /healthz said degraded, while /metrics had no series for it and
    # no alert could fire: only edge_gateway_forecast_kw went NaN, as for a new install (helper operator42)
    gw = running["gateway"]
    series = 'edge_gateway_job_failing{what="forecast cycle"}'
    assert values(await running["scrape"]())[series] == 0
    real = gw.forecast._cycle

    def broken(now):
        raise KeyError("a bug in the cycle")

    gw.forecast._cycle = broken
    try:
        await eventually(lambda: gw.device.status_flags(P.ONE_HOUR_FORECAST)["fault"], 10, "the points in fault")
        scraped = values(await running["scrape"]())
        assert scraped[series] == 1 and scraped['edge_gateway_job_failing{what="meter read"}'] == 0
        assert gw.forecast.status()["cycle_error"] == "KeyError: 'a bug in the cycle'"
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.http.url + "/healthz") as r:
                assert "forecast cycle failing (KeyError" in await r.text()
    finally:
        gw.forecast._cycle = real
    await eventually(lambda: not gw.device.status_flags(P.ONE_HOUR_FORECAST)["fault"], 15, "works again")
    assert values(await running["scrape"]())[series] == 0 and gw.forecast.status()["cycle_error"] is None


async def test_a_bacnet_address_lost_is_its_own_series_not_only_the_meter_fault_it_causes(running):
    # /healthz named it; on /metrics only the meter's fault followed, and the page sent the technician to the meter
    from bacnet_api.own_address import LINK, Missing

    gw = running["gateway"]
    watch = gw.device.own_address
    assert values(await running["scrape"]())["edge_gateway_bacnet_address_missing"] == 0
    probe = watch._probe
    watch._probe = lambda address: Missing(LINK, "the link of eth0, which holds 127.0.0.1, is down")
    try:
        watch.check()
        assert values(await running["scrape"]())["edge_gateway_bacnet_address_missing"] == 1
    finally:
        watch._probe = probe
        watch.check()
    assert values(await running["scrape"]())["edge_gateway_bacnet_address_missing"] == 0


async def test_readings_a_clock_not_set_keeps_from_the_vtn_are_counted(running):
    # the readings are lost to the utility, and no series said so: only the dashboard and /healthz
    gw = running["gateway"]

    async def not_reported():
        return values(await running["scrape"]())["edge_gateway_readings_not_reported"]
    assert await not_reported() == 0
    # the clock reads as not set (a box without a battery-backed clock, before NTP) for the meter's next readings,
    # taken by the real path: a reading dated by a set clock while the test scrapes ends the count, as it should
    gw.vtn._clock_not_set = lambda ts: "before this version was built"
    try:
        await eventually(lambda: gw.vtn.readings_held >= 2, 15, "readings held")
        held = await not_reported()
        assert 2 <= held <= gw.vtn.readings_held, held
    finally:
        del gw.vtn._clock_not_set
    await eventually(lambda: gw.vtn.readings_not_reported() == 0, 15, "a reading of a set clock")
    assert await not_reported() == 0


async def test_the_example_alert_rules_use_only_metrics_the_gateway_exposes(running):
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"], rule
        assert re.fullmatch(r"\d+[smhdw]", str(rule.get("for", "0s"))), rule
    used = {name for rule in rules for name in re.findall(r"\bedge_gateway_\w+", rule["expr"])}
    exposed = {s.name for f in await running["scrape"]() for s in f.samples}
    assert used and used <= exposed, sorted(used - exposed)
    alerts = [rule["alert"] for rule in rules]
    assert len(alerts) == len(set(alerts)), alerts


def test_the_settings_the_alert_rules_name_are_the_gateways():
    # an operator acting on an alert looks the setting up: a renamed key must fail here, not at the site
    from ven.config import GatewayConfig
    sections = {name: f.annotation for name, f in GatewayConfig.model_fields.items()}
    text = " ".join(str(v) for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
                    for v in rule["annotations"].values())
    text = re.sub(r"/api/status [\w.]+", "", text)     # fields of the status, not settings
    named = re.findall(rf"\b({'|'.join(sections)})\.(\w+)", text)
    assert named
    assert [f"{s}.{k}" for s, k in named if k not in sections[s].model_fields] == []

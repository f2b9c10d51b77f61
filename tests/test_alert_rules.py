"""examples/prometheus-alerts.yml under Prometheus's own rule engine (`promtool test rules`): each alert fires on the
series its fault gives and stays quiet on a healthy gateway's, a failed scrape included (tests/data/
prometheus_alerts_test.src.yml). Debian's prometheus package has promtool."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "prometheus-alerts.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def _render(text: str, labels: dict) -> str:
    # the annotations' {{ $labels.x }}; one with {{ $value }} is written out in the source
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)


def test_the_rule_file_is_valid():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_on_its_fault_and_not_on_a_healthy_gateway(tmp_path):
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((ROOT / "tests" / "data" / "prometheus_alerts_test.src.yml").read_text())
    tests["rule_files"] = [str(RULES)]
    tested = set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            tested.add(case["alertname"])
            for alert in case.get("exp_alerts", []):
                alert.setdefault("exp_annotations", {k: _render(v, alert["exp_labels"])
                                                     for k, v in rules[case["alertname"]]["annotations"].items()})
    assert tested == set(rules), f"alerts without a test: {sorted(set(rules) - tested)}"
    # the tests over days (series sampled every 5 min or every day) are evaluated every 15 min, not every minute:
    # 44,640 evaluations of every rule for the certificate's month took promtool over two minutes on a loaded machine
    files = []
    for days, evaluation in ((False, "1m"), (True, "15m")):
        part = {**tests, "evaluation_interval": evaluation,
                "tests": [t for t in tests["tests"] if (t.get("interval", "1m") != "1m") == days]}
        files.append(tmp_path / f"alerts_test_{evaluation}.yml")
        files[-1].write_text(yaml.safe_dump(part, sort_keys=False, width=200))
    done = subprocess.run([PROMTOOL, "test", "rules", *map(str, files)], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # Grafana shows a query Prometheus refuses as an empty panel; promtool parses each, as a recording rule
    import json

    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    values = {"job": ".*", "instance": ".*", "short": "15m", "long": "60m"}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == set(values), variables
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\$(\w+)", e)}
    assert used <= variables, used - variables
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$(\w+)", lambda m: values[m.group(1)], e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=400))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # every series shown per gateway: a fleet's legends told apart
    assert all('instance=~"$instance"' in e for e in exprs), [e for e in exprs if 'instance=~"$instance"' not in e]

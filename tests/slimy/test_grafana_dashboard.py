"""The Grafana dashboard in deploy/grafana: a sound dashboard model that provisioning loads, whose
queries name only metrics and labels a live /metrics exports (docs/metrics.md)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from queues.api import enqueue
from queues.django_q2.scheduler import record_failure
from queues.execution.runner import run_job
from tests.support.cluster import ROOT
from tests.support.heartbeats import heartbeat

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "slimy-queues.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

METRIC = re.compile(r"\b(slimy_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
VARIABLE = re.compile(r"\$\{([a-zA-Z_]\w*)(?::\w+)?\}|\$([a-zA-Z_]\w*)|\[\[([a-zA-Z_]\w*)\]\]")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: the panels' targets and the query variables'."""
    exprs = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_the_dashboard_is_a_sound_grafana_dashboard_model() -> None:
    dashboard = load()
    assert dashboard["uid"] == "slimy-queues"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"

    boxes = []
    for panel in panels:
        assert panel.get("title"), panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == DATASOURCE, panel["title"]
    for (a, one), (b, other) in itertools.combinations(boxes, 2):
        apart = (
            one["x"] + one["w"] <= other["x"]
            or other["x"] + other["w"] <= one["x"]
            or one["y"] + one["h"] <= other["y"]
            or other["y"] + other["h"] <= one["y"]
        )
        assert apart, f"panels {a!r} and {b!r} overlap"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("queue", "job_type"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["query"]["query"] == variables[name]["definition"]
    used = {
        next(filter(None, match.groups()))
        for match in VARIABLE.finditer(DASHBOARD.read_text())
        if not next(filter(None, match.groups())).startswith("__")
    }
    assert used, "the queries use the variables"
    assert used <= set(variables), f"undefined variables: {used - set(variables)}"


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="needs promtool (Debian package prometheus)"
)
def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    """promtool reads each panel query as a recording rule's expression: a query Prometheus
    cannot parse fails here, not on the wall. Variables stand in label values, where
    Grafana puts them, so the text is PromQL as it is."""
    rules = [
        {"record": f"slimy:dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel in all_panels(load())
        for target in panel.get("targets", [])
    ]
    for variable in load()["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"])
            assert selector, variable["definition"]
            rules.append({"record": f"slimy:dashboard:{variable['name']}", "expr": selector[1]})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_provisioning_loads_the_dashboard_folder_from_files() -> None:
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yml").read_text())
    assert provisioning["apiVersion"] == 1
    [provider] = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert provider["folder"]


def exported_series(text: str) -> dict[str, set[str]]:
    """{sample name: its label names} for our own series in a /metrics page."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("slimy_"):
                series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.mark.django_db
def test_every_metric_and_label_the_dashboard_queries_is_exported_by_metrics(
    client: Client, user: Any
) -> None:
    """Jobs run in-process and a schedule fails, so that every family has labelled series; then
    each metric the dashboard names must be one /metrics exports, and each label it selects,
    groups by or shows in a legend must be on that metric's series."""
    run_job(enqueue("test_sleep", {"user_id": user.pk}).pk)
    run_job(enqueue("test_permanent", {"user_id": user.pk}).pk)
    record_failure("nightly report", "simulated failure")
    heartbeat("database", 100, 4)  # a live cluster, so that its workers are exported
    response = client.get("/metrics")
    assert response.status_code == 200
    series = exported_series(response.content.decode())
    assert "slimy_job_wait_seconds_bucket" in series, "the jobs made labelled series"

    exprs = queries(load())
    named = set()
    for expr in exprs:
        metrics = [(m.group(1), m.group(2) or "") for m in METRIC.finditer(expr)]
        assert metrics, f"no slimy metric in {expr!r}"
        for name, selector in metrics:
            named.add(name)
            assert name in series, f"{name} (in {expr!r}) is not exported by /metrics"
            selected = set(MATCHER.findall(selector)) - {"__name__"}
            assert selected <= series[name], f"{name} has no label {selected - series[name]}"
        common = set.intersection(*(series[name] for name, _ in metrics))
        for grouping in GROUPING.findall(expr):
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= common, f"{expr!r} groups by {labels - common}, not on its series"
    for panel in all_panels(load()):
        for target in panel.get("targets", []):
            names = {m.group(1) for m in METRIC.finditer(target["expr"])}
            common = set.intersection(*(series[name] for name in names))
            shown = set(LEGEND.findall(target.get("legendFormat", "")))
            assert shown <= common, f"{panel['title']!r} shows {shown - common}, not a label"

    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in named}
    exported = {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in series}
    assert families == exported, "the dashboard shows every queue metric /metrics exports"

"""The Prometheus alert rules in deploy/prometheus: valid, each one firing and staying silent as
its unit tests say (`promtool test rules`), and written only on metrics /metrics exports.

.ci/run installs Debian's `prometheus` package (promtool) so that CI never skips these."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")

# Sample names a metric family of each type exposes.
SUFFIXES = {
    "counter": ["_total"],
    "gauge": [""],
    "histogram": ["_bucket", "_sum", "_count"],
}

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`)"
)


def promtool(*args: str) -> None:
    result = subprocess.run(
        [PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    assert "SUCCESS" in output, output


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_the_alert_rules_are_valid():
    promtool("check", "rules", ALERTS.name)


@needs_promtool
def test_each_alert_fires_and_stays_silent_as_its_unit_tests_say():
    promtool("test", "rules", ALERTS_TEST.name)


def test_each_alert_has_a_severity_and_a_runbook_section_that_exists():
    runbook = (RULES_DIR.parents[1] / "docs" / "alerts.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", heading.strip().lower().replace(" ", "-"))
        for heading in re.findall(r"^#+ (.+)$", runbook, re.MULTILINE)
    }
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        links = re.findall(r"docs/alerts\.md#([a-z0-9-]+)", rule["annotations"]["description"])
        assert links and set(links) <= anchors, (rule["alert"], links)
        assert rule["alert"] in tested, f"{rule['alert']} has no case in {ALERTS_TEST.name}"


@pytest.mark.django_db
def test_the_alert_rules_use_only_metrics_that_metrics_exports():
    text = Client().get("/metrics").content.decode()
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.update(family.name + suffix for suffix in SUFFIXES.get(family.type, [""]))
        exported.update(sample.name for sample in family.samples)
    used = {name for rule in alert_rules() for name in re.findall(r"\bslimy_[a-z_]+", rule["expr"])}
    assert used, "no slimy_ metric found in the rules"
    assert used <= exported, f"not exported by /metrics: {sorted(used - exported)}"

"""The alert rules and the dashboard's queries pass Prometheus' own checks.

``promtool check rules`` parses deploy/prometheus/alerts.yml, ``promtool test rules`` runs its
unit tests (each alert firing and staying quiet), and every query of the Grafana dashboard,
its variables filled in, is parsed by promtool as a recording rule. Without promtool these skip,
except where ``SYNCD_TEST_PROMTOOL_REQUIRED=1`` (CI) makes them fail; Debian's ``prometheus``
package installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_files import ALERT_TESTS, ALERTS, dashboard_expressions

PROMETHEUS = ALERTS.parent

#: Grafana's variables, as Grafana would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("SYNCD_TEST_PROMTOOL_REQUIRED") == "1":
        pytest.fail("promtool is required (SYNCD_TEST_PROMTOOL_REQUIRED=1) but not on PATH")
    pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_quiet() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen staying quiet"
    for alert in (rule for group in rules["groups"] for rule in group["rules"]):
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]


def test_a_broken_unit_test_fails(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with a threshold moved, promtool says which alert differs."""
    rules = ALERTS.read_text(encoding="utf-8").replace("> 0.05", "> 0.5")
    (tmp_path / ALERTS.name).write_text(rules, encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "SyncdRejectRateHigh" in result.stdout + result.stderr


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr.replace("$target", ".*")})
    assert len(rules) >= 10
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

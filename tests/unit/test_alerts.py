"""The Prometheus configuration and alert rules: promtool accepts them, their unit
tests pass, and every metric they name is one tillstream exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.metric_names import metric_references, unknown_metric_references

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "infra" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: SKIPPED the Prometheus rule checks "
    "(apt-get install prometheus; .ci/run installs it)",
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, check=False
    )


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    found: dict[str, str] = {}
    for group in rules["groups"]:
        for index, rule in enumerate(group["rules"]):
            name = rule.get("alert") or rule["record"]
            found[f"{name}#{index}"] = rule["expr"]
    return found


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_alert_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_alert_unit_tests_notice_a_changed_threshold(tmp_path: Path) -> None:
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("vector(7200)", "vector(9000)"))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "TillstreamNoIngestion" in result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_exists() -> None:
    alerts = {name.split("#")[0] for name in alert_expressions()}
    assert {
        "TillstreamQuarantineRateHigh",
        "TillstreamConsumerLagGrowing",
        "TillstreamNoIngestion",
        "TillstreamSinkFailing",
        "TillstreamComponentDown",
        "TillstreamTargetDown",
    } <= alerts


def test_every_metric_an_alert_uses_is_defined() -> None:
    exprs = list(alert_expressions().values())
    assert len(metric_references(exprs)) >= 8
    assert unknown_metric_references(exprs) == []


def test_every_alert_is_unit_tested() -> None:
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    covered = {
        case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", [])
    }
    alerts = {name.split("#")[0] for name in alert_expressions() if ":" not in name}
    assert alerts <= covered, f"no promtool test for {sorted(alerts - covered)}"

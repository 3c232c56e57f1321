"""deploy/'s files as the tests read them: the Grafana dashboard's and the alert rules' queries,
with Grafana's variables as a query would be sent with them, and the Prometheus tools."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "allocation.json"
ALERTS = DEPLOY / "alerts.yml"
# PyYAML comes with the dev tools (schemathesis) but without type stubs: imported by name so
# that strict mypy passes whether or not types-PyYAML is installed.
yaml: Any = importlib.import_module("yaml")
# Grafana's variables, as a query would be sent with them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": ".*"}


def tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; the test fails, saying how to get it, where
    it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: run scripts/ensure_promtool.sh (as root with "
                    "apt-get it installs Debian's `prometheus` package) or install Prometheus")
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and query id, PromQL) of every panel's query."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"{panel['title']} {target['refId']}", target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", ())]


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def as_sent(expr: str, variables: dict[str, str] | None = None) -> str:
    """A dashboard query with Grafana's variables filled in."""
    for variable, value in {**GRAFANA_VARIABLES, **(variables or {})}.items():
        expr = expr.replace(variable, value)
    return expr

"""deploy/: the dashboard's and the alerts' PromQL name only metrics the service exposes, promtool
accepts the rules (and the dashboard's queries), and docker-compose.yml runs Prometheus and
Grafana from deploy/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from allocation.entrypoints import metrics
from tests.helpers.apps import FakeApp
from tests.helpers.deploy import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    ROOT,
    alert_queries,
    as_sent,
    dashboard_queries,
    tool,
    yaml,
)

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",)}
METRIC = re.compile(r"\b(allocation_[A-Za-z0-9_]+|up)\b(?!\s*\()")


def promtool() -> str:
    return tool("promtool")


def exposed_names() -> set[str]:
    """Every sample name the API's /metrics can show: from a FakeApp after a sale, and the
    scrape-time gauges with all their parts present."""
    app = FakeApp()
    app.client.put("/v1/deploy/items/a", json={"total": 3})
    app.client.post("/v1/deploy/items/a/decrements", json={"qty": 1},
                    headers={"Idempotency-Key": "k"})
    text = app.client.get("/metrics").text
    text += metrics.exposition((1, 0.5), {"deploy": 1}, {"used": 1, "max": 2}, sales={
        ("deploy", "drop"): dict.fromkeys(("waiting", "admitted", "passes_used",
                                           "passes_expired", "available"), 1)})[0].decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def used_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(METRIC.findall(without_strings))


def test_every_metric_the_dashboard_and_the_alerts_use_is_exposed() -> None:
    exposed = exposed_names() | {"up"}  # up: Prometheus's own, per scrape target
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 10
    missing = {(where, name) for where, expr in queries for name in used_names(expr)
               if name not in exposed}
    assert not missing, f"names no /metrics shows: {sorted(missing)}"
    assert all(used_names(expr) for _, expr in queries)  # each query reads some metric
    used = set().union(*(used_names(expr) for _, expr in queries))
    for wanted in ("allocation_ledger_lag_seconds", "allocation_drift_items",
                   "allocation_redis_memory_used_bytes", "allocation_redis_memory_max_bytes",
                   "allocation_http_requests_total", "allocation_sale_units_sold_total",
                   "allocation_sale_units_held_total", "allocation_sale_refusals_total",
                   "allocation_stream_clients", "up"):
        assert wanted in used, wanted


def test_the_alert_rules_pass_promtool(tmp_path: Path) -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(ALERTS)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # As deployed: beside the token file the operator makes (promtool checks it is there).
    for name in ("prometheus.yml", ALERTS.name):
        shutil.copy(DEPLOY / name, tmp_path / name)
    (tmp_path / "metrics.token").write_text("alloc_made-by-the-operator\n")
    config = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def test_prometheus_scrapes_the_api_and_the_consumer_with_a_token() -> None:
    """/metrics needs a token of every namespace (API.md, Access), the consumer's health port's
    too; compose says how to make it."""
    jobs = {job["job_name"]: job
            for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    for name in ("allocation-api", "allocation-consumer"):
        assert jobs[name]["authorization"] == {"type": "Bearer",
                                               "credentials_file": "metrics.token"}, name
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["metrics-token"]["command"][1:6] == ["token", "create", "*", "--role",
                                                         "read"]


def test_the_dashboards_queries_parse(tmp_path: Path) -> None:
    # promtool parses a rules file's expressions: the panels' queries, as recording rules.
    rules = []
    for index, (_, expr) in enumerate(dashboard_queries()):
        expr = as_sent(expr)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'allocation_redis_memory_used_bytes{{job="allocation-api",instance="a"}}'
        values: '900x10'
      - series: 'allocation_redis_memory_max_bytes{{job="allocation-api",instance="a"}}'
        values: '1000x10'
      - series: 'allocation_redis_memory_used_bytes{{job="allocation-api",instance="b"}}'
        values: '900x10'
      - series: 'allocation_redis_memory_max_bytes{{job="allocation-api",instance="b"}}'
        values: '0x10'
      - series: 'up{{job="allocation-api",instance="a"}}'
        values: '1 0 0 0'
    alert_rule_test:
      - eval_time: 6m
        alertname: AllocationRedisMemoryHigh
        exp_alerts:  # b has no maxmemory: no alert, and no division by zero
          - exp_labels: {{severity: page, job: allocation-api, instance: a}}
            exp_annotations:
              summary: Redis is at 90% of its maxmemory
              description: At maxmemory Redis refuses writes and sales fail (README, Sizing Redis).
      - eval_time: 3m
        alertname: AllocationApiDown
        exp_alerts:
          - exp_labels: {{severity: page, job: allocation-api, instance: a}}
            exp_annotations:
              summary: allocation API a is not answering /metrics
              description: "Prometheus has not scraped the API for a minute: it serves no sale."
"""


def test_alerts_fire_as_meant_and_redis_without_maxmemory_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "alerts_test.yml"
    path.write_text(ALERT_TESTS.format(rules=json.dumps(str(ALERTS))))
    tested = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_compose_runs_prometheus_and_grafana_from_deploy() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    for name in ("prometheus", "grafana"):
        sources = [volume.split(":", 1)[0] for volume in services[name]["volumes"]]
        assert any(source.startswith("./deploy") for source in sources), (name, sources)
    assert any("/etc/prometheus/deploy/prometheus.yml" in arg
               for arg in services["prometheus"]["command"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in prometheus["scrape_configs"]}
    assert targets == {"allocation-api": ["api:8000"], "allocation-consumer": ["consumer:8001"]}
    assert "0.0.0.0" in services["consumer"]["command"]  # reachable from Prometheus
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path


def test_every_panel_reads_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" /
                                  "prometheus.yml").read_text())["datasources"]
    uids = {source["uid"] for source in provisioned}
    dashboard = json.loads(DASHBOARD.read_text())
    used = [target.get("datasource", panel.get("datasource"))
            for panel in dashboard["panels"] for target in panel.get("targets", ())]
    used += [variable["datasource"] for variable in dashboard["templating"]["list"]]
    assert used and all(source == {"type": "prometheus", "uid": uid} for source in used
                        for uid in uids), used


def test_hold_figures_are_not_summed_across_api_servers() -> None:
    # Read from Redis at scrape time, they are the same on every server: summing instances
    # would multiply them by the number of servers.
    shared = [family.name + "_total" for family in metrics.hold_families({})]
    for where, expr in dashboard_queries() + alert_queries():
        for name in shared:
            for found in re.finditer(rf"\b{name}\b", expr):
                before = expr[:found.start()]
                assert re.search(r"max by \([^)]*\) \((increase|rate)\($", before), (where, expr)


def test_compose_names_each_ledger_worker_after_its_container() -> None:
    # A stable name lets a worker restarted after a crash resume its entries at once; the
    # container's host name is its own (replicas differ) and survives a restart.
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["ledger-worker"]
    shell, flag, script = worker["command"]
    assert (shell, flag) == ("sh", "-c") and script.startswith("exec allocation ledger-worker ")
    assert '--name "ledger-$$HOSTNAME"' in script  # $$: a literal $ for the shell


def test_compose_gives_every_app_service_one_sale_secret_it_must_be_told() -> None:
    """Tickets and passes signed by one server must verify on the others (API.md, Waiting
    room): the one value comes from .env, and compose refuses to start without it rather
    than have each process draw its own."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    apps = {name: s for name, s in services.items() if s.get("build") == "."}
    assert {"api", "ledger-worker", "sweeper", "consumer", "token"} <= set(apps)
    for name, service in apps.items():
        assert service["environment"]["SALE_SECRET"].startswith("${SALE_SECRET:?"), name

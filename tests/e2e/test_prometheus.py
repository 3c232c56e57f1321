"""deploy/ with a real Prometheus: the server docker-compose starts, run from deploy/prometheus.yml
(only its targets moved to this run's API and consumer), scrapes them, evaluates every alert
rule without error, and answers every query of the Grafana dashboard; the sale's panel shows
the units sold."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from allocation.adapters.redis_keys import KeySpace
from allocation.config import Config
from tests.helpers.deploy import DASHBOARD, DEPLOY, as_sent, dashboard_queries, tool, yaml
from tests.helpers.processes import (
    Process,
    allocation_command,
    free_port,
    service_env,
    wait_until,
)


@pytest.fixture
def consumer_health(service_config: Config) -> Iterator[str]:
    """A pub/sub consumer serving its health port, as compose runs it; its host:port."""
    port = free_port()
    process = Process(allocation_command("consume", "--health-port", str(port)),
                      service_env(service_config))
    process.start()
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30,
               "the consumer's health port")
    yield f"127.0.0.1:{port}"
    process.stop()


@pytest.fixture
def prometheus(api: str, consumer_health: str, tmp_path: Path, admin_token: str
               ) -> Iterator[str]:
    """Prometheus from deploy/prometheus.yml, scraping every second with the token file it
    names (this run's token of every namespace); its base URL."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / path) for path in config["rule_files"]]
    here = {"allocation-api": api.removeprefix("http://"), "allocation-consumer": consumer_health}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [here[job["job_name"]]]}]
    (tmp_path / "metrics.token").write_text(admin_token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as stderr:  # a file, not a pipe nobody reads while it runs
        server = subprocess.Popen(
            [tool("prometheus"), f"--config.file={path}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or _answers(f"{url}/-/ready"), 30,
                   "Prometheus to start")
        assert server.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_prometheus_scrapes_both_alerts_evaluate_and_every_panel_answers(
        prometheus: str, api: str, namespace: str, service_config: Config) -> None:
    assert requests.put(f"{api}/v1/{namespace}/items/tee", json={"total": 10},
                        timeout=10).status_code == 201
    for n in range(3):
        assert requests.post(f"{api}/v1/{namespace}/items/tee/decrements", json={"qty": 2},
                             headers={"Idempotency-Key": f"p{n}"}, timeout=10).ok

    def up() -> dict[str, float]:
        return {s["metric"]["job"]: float(s["value"][1]) for s in query(prometheus, "up")}

    wait_until(lambda: up() == {"allocation-api": 1.0, "allocation-consumer": 1.0}, 30,
               "both targets scraped")
    # A sale over pub/sub is the consumer's to count: the panels sum both jobs.
    commands = redis.Redis.from_url(service_config.redis_url or "")
    # The drift gauge shows the last `drift` run's findings; this run's other tests make
    # drift on purpose in this key space, and this test is of a healthy sale.
    commands.delete(KeySpace(service_config.redis_key_prefix,
                             service_config.partitions).drift())
    wait_until(lambda: sum(n for _, n in commands.pubsub_numsub(
        service_config.commands_channel)) > 0, 30, "the consumer to subscribe")
    commands.publish(service_config.commands_channel, json.dumps({
        "command": "Decrement", "namespace": namespace, "sku": "tee", "qty": 1,
        "idempotency_key": "p-pubsub"}))
    commands.close()
    sold = f'sum(allocation_sale_units_sold_total{{namespace="{namespace}"}})'
    wait_until(lambda: [float(s["value"][1]) for s in query(prometheus, sold)] == [7.0], 30,
               "the units sold over HTTP and pub/sub in Prometheus")

    def rules() -> list[dict[str, Any]]:
        answer = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    # Every rule evaluated, none with an error (a query a rule file loads but cannot run).
    wait_until(lambda: bool(rules()) and all(
        r["health"] == "ok" and r["lastEvaluation"] > "2000" for r in rules()), 30,
        "every alert rule evaluated")
    alerts = {r["name"] for r in rules()}
    assert {"AllocationApiDown", "AllocationLedgerLagging", "AllocationDrift"} <= alerts
    assert not [r["name"] for r in rules() if r["state"] != "inactive"]  # a healthy sale

    for where, expr in dashboard_queries():
        sent = as_sent(expr, {"$namespace": namespace})
        answer = requests.get(f"{prometheus}/api/v1/query", params={"query": sent},
                              timeout=10).json()
        assert answer["status"] == "success", (where, sent, answer)
    # The dashboard's namespace picker, as Grafana asks for label_values(selector, namespace).
    picker = json.loads(DASHBOARD.read_text())["templating"]["list"][0]["query"]["query"]
    selector = re.fullmatch(r"label_values\((.*), namespace\)", picker)
    assert selector is not None, picker
    values = requests.get(f"{prometheus}/api/v1/label/namespace/values",
                          params={"match[]": selector.group(1)}, timeout=10).json()
    assert namespace in values["data"], values

    # A sale Prometheus sees happen shows in the panel of units sold in the range.
    assert requests.post(f"{api}/v1/{namespace}/items/tee/decrements", json={"qty": 3},
                         headers={"Idempotency-Key": "p-later"}, timeout=10).ok
    panel = as_sent(next(expr for _, expr in dashboard_queries()
                         if "allocation_sale_units_sold_total" in expr and "$__range" in expr),
                    {"$namespace": namespace})

    def shown() -> list[tuple[str, float]]:
        return [(s["metric"]["namespace"], float(s["value"][1])) for s in query(prometheus,
                                                                                panel)]

    wait_until(lambda: len(shown()) == 1 and shown()[0][1] >= 3, 30,
               "the later sale in the dashboard's panel")
    assert shown()[0][0] == namespace


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False

"""Access with no way around it (issue 24), against real servers: every other spelling of a
/v1/ path through both front ends, a flood of made-up tokens beside a sale (with the database
partitioned too), revocation heard through Redis while the database is away, /metrics and a
namespace's stats behind their tokens, and `token create` without a database."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from allocation.adapters.token_store import TokenStore, checking_engine
from allocation.config import Config
from allocation.entrypoints.route_table import ROUTES
from tests.helpers.cli_runs import run_cli
from tests.helpers.processes import (
    free_port,
    ledger_worker,
    serve,
    service_env,
    wait_until,
)
from tests.helpers.tcp_proxy import TcpProxy

NO_TOKEN: dict[str, str | None] = {"Authorization": None}


@pytest.fixture(scope="module")
def config(service_config: Config) -> Config:
    return dataclasses.replace(service_config, redis_key_prefix=f"{service_config.redis_key_prefix}"
                                                                f":g{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def store(config: Config) -> Iterator[TokenStore]:
    engine = create_engine(config.database_url)
    yield TokenStore(engine)
    engine.dispose()


def bearer(token: str) -> dict[str, str | None]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module", params=["rsgi", "wsgi"])
def front_end(request: pytest.FixtureRequest, config: Config) -> Iterator[str]:
    worker = ledger_worker(config)
    wsgi = request.param == "wsgi"
    servers = serve(config, workers=1, wsgi=True) if wsgi else serve(config)
    try:
        yield next(servers)
    finally:
        next(servers, None)
        worker.stop()


def send(base: str, method: str, path: str, token: str | None,
         body: dict[str, object] | None = None) -> int:
    """One request with its path exactly as written (requests and urllib3 would tidy it)."""
    where = urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
    headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def spellings(path: str) -> list[str]:
    """Other ways to write ``path`` (/v1/ns/...) that a router might read as it."""
    segments = path.split("/")[1:]
    doubled = ["/" + "/".join([*segments[:i], "", *segments[i:]])
               for i in range(len(segments))]
    rest = "/".join(segments[1:])
    return [*doubled, "/" + path, "//" + path, f"/%2F{path[1:]}", f"/%2f{path[1:]}",
            f"/%2F%2F{path[1:]}", f"/.{path}", f"/%2E{path}", f"/v1/./{rest}",
            f"/v1/%2e/{rest}", f"/v1/zz/../{rest}", f"/v1/zz/%2E%2E/{rest}",
            f"/v1/zz/.%2e/{rest}", f"{path}/", f"{path}/.", f"{path}//", f"/V1/{rest}",
            f"/v1./{rest}", f"/v1%2F{rest}", f"{path}.", "/v1/" + rest.replace("/", "%2F", 1)]


def test_no_spelling_of_a_v1_path_gets_past_access_and_nothing_changes(
        front_end: str, store: TokenStore, namespace: str) -> None:
    _, admin = store.create(namespace, "admin", "e2e spellings")
    _, elsewhere = store.create(f"{namespace}x", "admin", "e2e spellings elsewhere")
    item = f"/v1/{namespace}/items/tee"
    assert send(front_end, "PUT", item, admin, {"total": 50}) == 201
    assert send(front_end, "PUT", f"/v1/{namespace}/items/cap", admin, {"total": 5}) == 201
    sale = f"/v1/{namespace}/sales/drop"
    assert send(front_end, "PUT", sale, admin, {"skus": ["cap"]}) == 201
    ticket = requests.post(f"{front_end}{sale}/queue", json={"buyer": "ann"},
                           headers=bearer(admin), timeout=10).json()["ticket"]
    before = requests.get(f"{front_end}{item}", headers=bearer(admin), timeout=10).json()
    sale_before = requests.get(f"{front_end}{sale}", headers=bearer(admin), timeout=10).json()
    operations: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", item, None), ("PUT", item, {"total": 99}),
        ("POST", f"{item}/adjustments", {"delta": 5}), ("POST", f"{item}/decrements", {"qty": 1}),
        ("POST", f"{item}/refunds", {"qty": 1}),
        ("POST", f"/v1/{namespace}/reservations", {"lines": [{"sku": "tee", "qty": 1}]}),
        ("GET", sale, None), ("PUT", sale, {"skus": ["tee"]}), ("POST", f"{sale}/close", None),
        ("POST", f"{sale}/queue", {"buyer": "bob"}), ("GET", f"{sale}/queue/{ticket}", None),
        ("GET", f"{sale}/queue/{ticket}/stream", None)]
    answers: dict[int, int] = {}
    for method, path, body in operations:
        for spelt in spellings(path):
            for token in (None, elsewhere):
                status = send(front_end, method, spelt, token, body)
                if status == 200 and "/queue/" in path and "%2F" in spelt.removeprefix("/%2F"):
                    # granian's gap (CHANGELOG): an encoded slash arrives decoded, and the
                    # path it routes to is a ticket's poll, which needs no token anyway.
                    continue
                assert status in (401, 403, 404), (method, spelt, token is not None, status)
                answers[status] = answers.get(status, 0) + 1
    assert answers[404] > 100  # most spellings are refused as paths, before any token
    # The canonical path with its token works: the refusals above were of the spelling.
    assert send(front_end, "GET", item, admin) == 200
    assert send(front_end, "GET", item, None) == 401
    after = requests.get(f"{front_end}{item}", headers=bearer(admin), timeout=10).json()
    assert after == before
    sale_after = requests.get(f"{front_end}{sale}", headers=bearer(admin), timeout=10).json()
    assert (sale_after["state"], sale_after["waiting"] + sale_after["admitted"]) == (
        sale_before["state"], sale_before["waiting"] + sale_before["admitted"])
    assert send(front_end, "GET", f"{sale}/queue/{ticket}", None) == 200  # no token needed
    ledger = requests.get(f"{front_end}{item}/ledger", headers=bearer(admin), timeout=10).json()
    assert [entry["kind"] for entry in ledger["entries"]] in ([], ["init"])


def test_a_path_is_decoded_once(front_end: str, store: TokenStore, namespace: str) -> None:
    _, admin = store.create(namespace, "admin", "e2e decoded once")
    assert send(front_end, "PUT", f"/v1/{namespace}/items/tee", admin, {"total": 5}) == 201
    assert send(front_end, "GET", f"/v1/{namespace}/items/t%65e", admin) == 200  # once: tee
    assert send(front_end, "GET", f"/v1/{namespace}/items/te%2565", admin) in (400, 404)


def send_raw(base: str, method: str, target: str, headers: dict[str, str],
             body: dict[str, object] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request written byte for byte, its target and headers as UTF-8 (http.client refuses
    what is not ASCII): the status, the headers (names lower case) and the JSON body, if any."""
    where = urlsplit(base)
    data = b"" if body is None else json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": where.netloc, "Connection": "close", "Content-Type": "application/json",
        "Content-Length": str(len(data)), **headers}.items())
    with socket.create_connection((where.hostname or "", where.port or 80), timeout=10) as conn:
        conn.sendall(f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    top, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    answered = {name.lower(): value.strip() for name, _, value in
                (line.partition(":") for line in lines)}
    is_json = answered.get("content-type", "").startswith("application/json")
    return int(status_line.split()[1]), answered, json.loads(content) if is_json else None


def concrete(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace(f"<{name}>", value)
    return path


def test_a_query_parameter_a_route_does_not_define_or_cannot_read_is_400_on_every_route(
        front_end: str, namespace: str, admin_token: str) -> None:
    """Every route of the table, through both front ends: an unknown query parameter, and one
    whose name or value is not ASCII or not UTF-8, is 400 naming it, and changes nothing."""
    admin = {"Authorization": f"Bearer {admin_token}"}  # of every namespace: /metrics too
    item = f"{front_end}/v1/{namespace}/items/tee"
    assert requests.put(item, json={"total": 50}, headers=admin, timeout=10).status_code == 201
    assert requests.put(f"{front_end}/v1/{namespace}/items/cap", json={"total": 5},
                        headers=admin, timeout=10).status_code == 201
    sale = f"{front_end}/v1/{namespace}/sales/drop"
    assert requests.put(sale, json={"skus": ["cap"]}, headers=admin, timeout=10).ok
    ticket = requests.post(f"{sale}/queue", json={"buyer": "ann"}, headers=admin,
                           timeout=10).json()["ticket"]
    held = requests.post(f"{front_end}/v1/{namespace}/reservations", timeout=10, json={
        "lines": [{"sku": "tee", "qty": 2}]}, headers={**admin, "Idempotency-Key": "q-hold"})
    assert held.status_code == 201
    reservation = f"{front_end}/v1/{namespace}/reservations/{held.json()['id']}"

    def state() -> list[Any]:
        answers = [requests.get(url, headers=admin, timeout=10).json() for url in (
            item, f"{item}/ledger", reservation, f"{front_end}/v1/{namespace}/items")]
        drop = requests.get(sale, headers=admin, timeout=10).json()
        return [*answers, (drop["state"], drop["waiting"] + drop["admitted"])]

    wait_until(lambda: len(requests.get(f"{item}/ledger", headers=admin, timeout=10).json()[
        "entries"]) == 2, 10, "the ledger to have the init and the hold")
    before = state()
    values = {"namespace": namespace, "sku": "tee", "sale": "drop", "ticket": ticket,
              "reservation_id": held.json()["id"]}
    bodies: dict[str, dict[str, object]] = {
        "init_item": {"total": 99}, "set_limit": {"limit_per_buyer": 1},
        "adjust": {"delta": 5}, "decrement": {"qty": 1}, "refund": {"qty": 1},
        "reserve": {"lines": [{"sku": "tee", "qty": 1}]}, "extend": {"ttl_seconds": 60},
        "put_sale": {"skus": ["tee"]}, "join_queue": {"buyer": "bob"}}
    checked = 0
    for route in ROUTES:
        path = concrete(route.path, {**values, "name": "swagger-ui.css" if route.path.startswith(
            "/docs") else "dashboard.css"})
        queries = [("bogus=1", "bogus"), ("x", "x"), ("\u00e9=1", "\u00e9"),
                   ("%C3%A9=1", "\u00e9"), ("\uff15=1", "\uff15"), ("%FF=1", "\ufffd"),
                   (f"{route.query[0]}=1&bogus=2" if route.query else "bogus=%FF", "bogus")]
        for name in route.query:  # its own, with a value no one could mean
            queries += [(f"{name}=%FF", name), (f"{name}=\u00e9", name),
                        (f"{name}=\uff15", name)]
        for query, field in queries:
            status, _, answer = send_raw(front_end, route.method, f"{path}?{query}", {
                **admin, "Idempotency-Key": "q-query"}, bodies.get(route.name))
            assert (status, (answer or {}).get("field")) == (400, field), (
                route.name, query, status, answer)
            assert answer["error"] == "invalid_field"
            checked += 1
    assert checked > 7 * len(ROUTES)
    assert state() == before
    # The probe's own: what was a 500 through granian.
    for target, field in ((f"/v1/{namespace}/items?after=\u00e9", "after"),
                          (f"/v1/{namespace}/items/tee/ledger?after_seq=\u00e9", "after_seq"),
                          (f"/v1/{namespace}/items?limit=\uff15", "limit")):
        status, _, answer = send_raw(front_end, "GET", target, admin)
        assert (status, answer["field"]) == (400, field), target
    assert send_raw(front_end, "GET", f"/v1/{namespace}/items?limit=1&after=a", admin)[0] == 200


@pytest.mark.parametrize("authorization", ["Bearer \u00e9t\u00e9", "B\u00e9arer x",
                                           "Bearer alloc_\u00e9"])
def test_an_authorization_header_that_is_not_ascii_is_401_with_www_authenticate(
        front_end: str, namespace: str, authorization: str) -> None:
    for method, path in (("GET", f"/v1/{namespace}/items/tee"),
                         ("POST", f"/v1/{namespace}/items/tee/decrements"),
                         ("GET", "/metrics")):
        status, headers, answer = send_raw(front_end, method, path, {
            "Authorization": authorization, "Idempotency-Key": "q-auth"}, {"qty": 1})
        assert (status, answer["error"]) == (401, "unauthorized"), (method, path, answer)
        assert headers["www-authenticate"].startswith("Bearer")
    assert send_raw(front_end, "GET", "/healthz", {"Authorization": authorization})[0] == 200


# --- A server whose database connection goes through a proxy that can stop forwarding ---


@pytest.fixture(scope="module")
def database_proxy(config: Config) -> Iterator[TcpProxy]:
    proxy = TcpProxy(make_url(config.database_url).port or 5432)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def partitionable(config: Config, database_proxy: TcpProxy) -> Iterator[str]:
    """`allocation serve`, its database reached through ``database_proxy``."""
    url = make_url(config.database_url).set(host="127.0.0.1", port=database_proxy.port)
    proxied = dataclasses.replace(config, database_url=url.render_as_string(hide_password=False))
    worker = ledger_worker(config)
    servers = serve(proxied)
    try:
        yield next(servers)
    finally:
        database_proxy.heal()
        next(servers, None)
        worker.stop()


class Clients:
    """Threads each sending one kind of request in a loop, recording (status, seconds)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def run(self, count: int, ask: Callable[[requests.Session, int], int],
            into: list[tuple[int, float]]) -> None:
        def loop(n: int) -> None:
            session = requests.Session()
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = ask(session, n)
                except requests.RequestException:
                    status = 0
                with self.lock:
                    into.append((status, time.monotonic() - started))
        for n in range(count):
            thread = threading.Thread(target=loop, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def made_up() -> str:
    """A random token: of the minted format half the time, garbage otherwise."""
    if random.random() < 0.5:
        return "alloc_" + secrets.token_urlsafe(32)
    return secrets.token_hex(random.randint(1, 40))


def test_a_flood_of_made_up_tokens_leaves_the_sale_selling_even_with_the_database_away(
        partitionable: str, store: TokenStore, database_proxy: TcpProxy,
        namespace: str) -> None:
    _, admin = store.create(namespace, "admin", "e2e flood admin")
    _, seller = store.create(namespace, "sell", "e2e flood seller")
    item = f"{partitionable}/v1/{namespace}/items/hot"
    assert requests.put(item, json={"total": 1_000_000}, headers=bearer(admin),
                        timeout=10).status_code == 201
    sales: list[tuple[int, float]] = []
    flood: list[tuple[int, float]] = []
    keys = iter(range(10**9))

    def sell(session: requests.Session, _: int) -> int:
        return session.post(f"{item}/decrements", json={"qty": 1}, timeout=10, headers={
            **bearer(seller), "Idempotency-Key": f"f{next(keys)}"}).status_code

    def guess(session: requests.Session, _: int) -> int:
        return session.get(item, headers=bearer(made_up()), timeout=10).status_code

    clients = Clients()
    clients.run(1, sell, sales)
    try:
        wait_until(lambda: len(sales) >= 20, 10, "the sale to start")
        clients.run(16, guess, flood)
        time.sleep(3)  # the flood runs this long (a duration, not a wait for something)
        with clients.lock:
            up_sales, up_flood = list(sales), list(flood)
        database_proxy.partition()
        partitioned_at = len(sales), len(flood)
        time.sleep(3)  # the partition lasts this long
        with clients.lock:
            down_sales = sales[partitioned_at[0]:]
            down_flood = flood[partitioned_at[1]:]
    finally:
        clients.join()
        database_proxy.heal()
    assert {status for status, _ in up_sales} == {200}
    assert {status for status, _ in up_flood} <= {401, 503} and len(up_flood) > 100
    # With the database away: every made-up token answered within a second, the sale goes on.
    assert len(down_flood) > 100, len(down_flood)
    assert {status for status, _ in down_flood} <= {401, 503}
    assert max(seconds for _, seconds in down_flood) < 1.0
    assert len(down_sales) > 20 and {status for status, _ in down_sales} == {200}
    assert max(seconds for _, seconds in down_sales) < 1.0


def cli(config: Config, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), {**service_env(config), **(env or {})})


def test_a_token_revoked_while_the_server_cannot_reach_the_database_is_refused_within_5_s(
        partitionable: str, config: Config, store: TokenStore, database_proxy: TcpProxy,
        namespace: str) -> None:
    _, admin = store.create(namespace, "admin", "e2e revoke admin")
    token_id, seller = store.create(namespace, "sell", "e2e revoke seller")
    item = f"{partitionable}/v1/{namespace}/items/hot"
    assert requests.put(item, json={"total": 1000}, headers=bearer(admin), timeout=10).ok
    keys = iter(range(10**9))

    def sold() -> int:
        return requests.post(f"{item}/decrements", json={"qty": 1}, timeout=5, headers={
            **bearer(seller), "Idempotency-Key": f"r{next(keys)}"}).status_code

    for _ in range(8):  # both worker processes know it
        assert sold() == 200
    database_proxy.partition()
    try:
        assert sold() == 200  # the server keeps its copy of the tokens meanwhile
        revoked = cli(config, "token", "revoke", token_id)  # the CLI reaches the database
        assert revoked.returncode == 0, revoked.stderr
        revoked_at = time.monotonic()
        wait_until(lambda: {sold() for _ in range(8)} == {401}, 5,
                   "every worker to refuse the revoked token")
        assert time.monotonic() - revoked_at < 5
    finally:
        database_proxy.heal()


def test_without_redis_a_revocation_reaches_servers_through_the_database(
        front_end: str, config: Config, store: TokenStore, namespace: str) -> None:
    token_id, reader = store.create(namespace, "read", "e2e revoke without redis")
    url = f"{front_end}/v1/{namespace}/items"
    assert requests.get(url, headers=bearer(reader), timeout=10).ok
    revoked = cli(config, "token", "revoke", token_id,
                  env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "not told through Redis" in revoked.stderr
    wait_until(lambda: {requests.get(url, headers=bearer(reader), timeout=10).status_code
                        for _ in range(8)} == {401}, 5, "the reload to refuse the token")


def test_metrics_needs_a_token_of_every_namespace_and_stats_a_namespaces_read_token(
        front_end: str, store: TokenStore, namespace: str) -> None:
    _, admin = store.create(namespace, "admin", "e2e stats admin")
    _, reader = store.create(namespace, "read", "e2e stats reader")
    _, everywhere = store.create("*", "read", "e2e metrics")
    item = f"{front_end}/v1/{namespace}/items/tee"
    assert requests.put(item, json={"total": 10}, headers=bearer(admin), timeout=10).ok
    assert requests.post(f"{item}/decrements", json={"qty": 3}, timeout=10, headers={
        **bearer(admin), "Idempotency-Key": "s1"}).ok
    metrics = f"{front_end}/metrics"
    refused = requests.get(metrics, headers=NO_TOKEN, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(metrics, headers=bearer(admin), timeout=10).status_code == 403
    shown = requests.get(metrics, headers=bearer(everywhere), timeout=10)
    assert shown.status_code == 200
    assert f'allocation_sale_units_sold_total{{namespace="{namespace}"}} 3.0' in shown.text
    stats = requests.get(f"{front_end}/v1/{namespace}/stats", headers=bearer(reader),
                         timeout=10)
    assert stats.status_code == 200 and stats.json()["units"]["sold"] == 3
    assert requests.get(f"{front_end}/v1/{namespace}x/stats", headers=bearer(reader),
                        timeout=10).status_code == 403
    assert requests.get(f"{front_end}/v1/{namespace}/stats", headers=NO_TOKEN,
                        timeout=10).status_code == 401


def test_token_create_without_a_database_url_fails_unless_embedded_is_meant(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "AUTH")}
    command = [sys.executable, "-m", "allocation.entrypoints.cli", "token", "create", "shop",
               "--role", "admin"]
    refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "DATABASE_URL is not set" in refused.stderr
    assert not (tmp_path / "allocation.db").exists()  # nothing written anywhere
    migrated = subprocess.run([*command[:3], "migrate"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)
    assert migrated.returncode == 0, migrated.stderr
    meant = subprocess.run([*command, "--embedded"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)
    assert meant.returncode == 0, meant.stderr
    assert meant.stdout.startswith("alloc_") and (tmp_path / "allocation.db").exists()


def test_token_checks_run_on_an_engine_of_their_own_with_deadlines(config: Config) -> None:
    engine = checking_engine(config.database_url, 3)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1s"
            client_side = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
            assert (client_side["connect_timeout"], client_side["tcp_user_timeout"]) == (
                "2", "2000")  # a peer that stops answering mid-call is given up in 2 s
        assert engine.pool.size() == 4  # type: ignore[attr-defined]  # look-ups and reload
    finally:
        engine.dispose()

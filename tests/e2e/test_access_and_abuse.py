"""Access and abuse against the real server: tokens made and revoked from the command line,
roles and namespaces, and the holes an attacker tried (slow and truncated bodies, repeated keys
and headers, unbounded numbers, a refresh storm)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from allocation.config import Config
from tests.helpers.cli_runs import run_cli
from tests.helpers.processes import (
    Process,
    allocation_command,
    serve,
    service_env,
    wait_until,
)

NO_TOKEN: dict[str, str | None] = {"Authorization": None}


@pytest.fixture(scope="module")
def config(service_config: Config) -> Config:
    return dataclasses.replace(service_config, redis_key_prefix=f"{service_config.redis_key_prefix}"
                                                                f":a{uuid.uuid4().hex[:8]}")


def cli(config: Config, *args: str, env: dict[str, str] | None = None) -> str:
    done = run_cli(list(args), {**service_env(config), **(env or {})}, check=True)
    return done.stdout


def token(config: Config, namespace: str, role: str) -> str:
    made = cli(config, "token", "create", namespace, "--role", role, "--name", f"e2e {role}")
    return made.strip()


def bearer(value: str) -> dict[str, str | None]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def server(config: Config) -> Iterator[str]:
    worker = Process(allocation_command("ledger-worker"), service_env(config))
    worker.start()
    api = serve(dataclasses.replace(config))
    try:
        yield next(api)
    finally:
        next(api, None)
        worker.stop()


@pytest.fixture(scope="module")
def admin(config: Config) -> str:
    return token(config, "*", "admin")


def test_the_cli_prints_a_token_alone_and_lists_it_without_the_secret(config: Config,
                                                                      namespace: str) -> None:
    secret = token(config, namespace, "read")
    assert secret.startswith("alloc_") and len(secret) > 40 and "\n" not in secret
    listed = cli(config, "token", "list", namespace).splitlines()
    assert len(listed) == 1
    token_id, ns, role, name, _made, used = listed[0].split("\t")
    assert (ns, role, name, used) == (namespace, "read", "e2e read", "-")
    assert secret not in listed[0] and token_id
    with pytest.raises(subprocess.CalledProcessError):
        cli(config, "token", "create", "bad namespace!", "--role", "read")
    with pytest.raises(subprocess.CalledProcessError):
        cli(config, "token", "create", namespace, "--role", "owner")


def test_roles_and_namespaces_are_enforced_and_refusals_change_nothing(
        server: str, config: Config, admin: str, namespace: str) -> None:
    item = f"{server}/v1/{namespace}/items/hot"
    assert requests.put(item, json={"total": 10}, headers=bearer(admin), timeout=10).ok
    reader, seller = token(config, namespace, "read"), token(config, namespace, "sell")
    other = token(config, f"{namespace}x", "admin")

    def sell(headers: dict[str, str | None], key: str) -> requests.Response:
        return requests.post(f"{item}/decrements", json={"qty": 1}, timeout=10,
                             headers={**headers, "Idempotency-Key": key})

    refused = sell(NO_TOKEN, "a")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused.json()["error"] == "unauthorized"
    assert sell(bearer("alloc_not-a-token"), "b").status_code == 401
    assert sell(bearer(reader), "c").status_code == 403
    assert sell(bearer(other), "d").status_code == 403  # an admin, of another namespace
    # Refused before the item is looked at: an unknown item answers the same.
    assert requests.get(f"{server}/v1/{namespace}/items/nope", headers=bearer(other),
                        timeout=10).status_code == 403
    assert requests.post(f"{item}/adjustments", json={"delta": 5}, headers=bearer(seller),
                         timeout=10).status_code == 403
    assert requests.post(f"{item}/refresh", headers=bearer(seller), timeout=10).status_code == 403
    figures = requests.get(item, headers=bearer(reader), timeout=10).json()
    assert (figures["total"], figures["consumed"]) == (10, 0)  # none of that changed anything
    assert sell(bearer(seller), "e").status_code == 200
    for open_path in ("/healthz", "/readyz", "/openapi.json", "/docs",
                      "/docs/swagger-ui-bundle.js"):
        assert requests.get(f"{server}{open_path}", headers=NO_TOKEN, timeout=10).ok, open_path


def test_a_revoked_token_is_refused_by_every_worker_within_5_seconds(
        server: str, config: Config, admin: str, namespace: str) -> None:
    reader = token(config, namespace, "read")
    url = f"{server}/v1/{namespace}/items"
    for _ in range(8):  # both worker processes have seen it (connections spread over them)
        assert requests.get(url, headers=bearer(reader), timeout=10).ok
    token_id = next(line.split("\t")[0] for line in cli(config, "token", "list", namespace)
                    .splitlines())
    assert "revoked" in cli(config, "token", "revoke", token_id)
    revoked_at = time.monotonic()

    def refused_everywhere() -> bool:
        answers = {requests.get(url, headers=bearer(reader), timeout=10).status_code
                   for _ in range(8)}  # new connections each: both workers answer
        return answers == {401}

    wait_until(refused_everywhere, 5, "every worker to refuse the revoked token")
    assert time.monotonic() - revoked_at < 5
    assert "revoked" in cli(config, "token", "list", namespace)
    with pytest.raises(subprocess.CalledProcessError):
        cli(config, "token", "revoke", token_id)  # revoking twice says so


def raw(server: str, request: bytes) -> bytes:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        return s.recv(65536)


def test_repeated_keys_and_headers_are_400_and_change_nothing(server: str, admin: str,
                                                              namespace: str) -> None:
    item = f"{server}/v1/{namespace}/items/hot"
    requests.put(item, json={"total": 10}, headers=bearer(admin), timeout=10)
    repeated = requests.post(f"{item}/decrements", data=b'{"qty": 1, "qty": 5}', timeout=10,
                             headers={**bearer(admin), "Content-Type": "application/json",
                                      "Idempotency-Key": "r1"})
    assert repeated.status_code == 400 and repeated.json()["field"] == "qty"
    path = f"/v1/{namespace}/items/hot/decrements"
    two_keys = raw(server, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
        "Content-Type: application/json\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n"
        "Content-Length: 9\r\nConnection: close\r\n\r\n{\"qty\":1}").encode())
    assert two_keys.startswith(b"HTTP/1.1 400") and b"Idempotency-Key" in two_keys
    # A key that is not ASCII (the server would otherwise drop the header, and an adjustment,
    # which may go without a key, would be applied twice when retried).
    adjust = f"/v1/{namespace}/items/hot/adjustments"
    for _ in range(2):
        accented = raw(server, (
            f"POST {adjust} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
            "Content-Type: application/json\r\nIdempotency-Key: caf\u00e9\r\n"
            "Content-Length: 11\r\nConnection: close\r\n\r\n{\"delta\":1}").encode("latin-1"))
        assert accented.startswith(b"HTTP/1.1 400") and b"idempotency-key" in accented
    assert requests.get(item, headers=bearer(admin), timeout=10).json()["total"] == 10
    too_far = requests.get(f"{item}/ledger", params={"after_seq": 2**63}, headers=bearer(admin),
                           timeout=10)
    assert too_far.status_code == 400 and too_far.json()["field"] == "after_seq"
    assert requests.get(item, headers=bearer(admin), timeout=10).json()["consumed"] == 0


def test_access_is_decided_before_the_body_is_read(server: str, config: Config, admin: str,
                                                   namespace: str) -> None:
    """API.md, Access. Each request sends its headers and withholds its body: the answer comes
    without it (else the server waits BODY_TIMEOUT_SECONDS, 10 s, then answers 408)."""
    host, port = server.removeprefix("http://").split(":")
    item = f"{server}/v1/{namespace}/items/hot"
    assert requests.put(item, json={"total": 5}, headers=bearer(admin), timeout=10).ok
    elsewhere = token(config, f"{namespace}-other", "admin")
    for authorization, status in ((None, 401), (f"Bearer unknown-{uuid.uuid4().hex}", 401),
                                  (f"Bearer {elsewhere}", 403)):
        given = f"Authorization: {authorization}\r\n" if authorization else ""
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall((f"POST /v1/{namespace}/items/hot/decrements HTTP/1.1\r\nHost: x\r\n"
                       f"{given}Content-Type: application/json\r\nIdempotency-Key: k\r\n"
                       "Content-Length: 20\r\n\r\n").encode())
            answered = s.recv(4096)
        assert answered.startswith(f"HTTP/1.1 {status}".encode()), (authorization, answered)
    too_big = requests.post(f"{item}/decrements", data=b"x" * 70_000, timeout=10, headers={
        **NO_TOKEN, "Content-Type": "application/json", "Idempotency-Key": "k"})
    assert too_big.status_code == 401  # not 413: whoever it is, it may not sell
    figures = requests.get(item, headers=bearer(admin), timeout=10).json()
    assert figures["consumed"] == 0


def test_slow_and_truncated_bodies_take_no_thread_and_are_never_applied(
        config: Config, admin: str, namespace: str) -> None:
    worker = Process(allocation_command("ledger-worker"), service_env(config))
    worker.start()
    api = serve(dataclasses.replace(config), extra_env={"BODY_TIMEOUT_SECONDS": "3"})
    server = next(api)
    host, port = server.removeprefix("http://").split(":")
    path = f"/v1/{namespace}/items/hot/decrements"
    slow: list[socket.socket] = []
    try:
        item = f"{server}/v1/{namespace}/items/hot"
        assert requests.put(item, json={"total": 1000}, headers=bearer(admin), timeout=10).ok
        for n in range(200):  # headers, then a part of the body, then nothing
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
                       f"Content-Type: application/json\r\nIdempotency-Key: slow-{n}\r\n"
                       "Content-Length: 20\r\n\r\n{\"qty\"").encode())
            slow.append(s)
        started = time.monotonic()
        assert requests.get(f"{server}/healthz", timeout=5).ok
        sold = requests.post(f"{item}/decrements", json={"qty": 1}, timeout=5,
                             headers={**bearer(admin), "Idempotency-Key": "meanwhile"})
        assert sold.status_code == 200
        assert time.monotonic() - started < 1  # both answered within a second
        for s in slow[:100]:  # half give up mid-body
            s.close()
        answered = slow[100].recv(4096)  # the other half wait out the body timeout
        assert answered.startswith(b"HTTP/1.1 408"), answered
        figures = requests.get(item, headers=bearer(admin), timeout=10).json()
        assert figures["consumed"] == 1  # only "meanwhile": no partial body was applied
    finally:
        for s in slow:
            s.close()
        next(api, None)
        worker.stop()


def test_a_refresh_storm_leaves_the_sale_selling(server: str, config: Config, admin: str,
                                                 namespace: str) -> None:
    item = f"{server}/v1/{namespace}/items/hot"
    assert requests.put(item, json={"total": 600}, headers=bearer(admin), timeout=10).ok
    seller = token(config, namespace, "sell")
    stop = threading.Event()
    refreshes: list[int] = []

    def storm() -> None:
        session = requests.Session()
        while not stop.is_set():
            r = session.post(f"{item}/refresh", headers=bearer(admin), timeout=30)
            refreshes.append(r.status_code)

    storms = [threading.Thread(target=storm) for _ in range(2)]
    for t in storms:
        t.start()
    statuses: list[int] = []
    try:
        session = requests.Session()
        for n in range(800):
            r = session.post(f"{item}/decrements", json={"qty": 1}, timeout=30,
                             headers={**bearer(seller), "Idempotency-Key": f"s{n}"})
            statuses.append(r.status_code)
    finally:
        stop.set()
        for t in storms:
            t.join(30)
    assert len(refreshes) > 20 and set(refreshes) <= {200, 503}
    assert statuses.count(200) == 600 and set(statuses) <= {200, 409, 503}
    # Refreshes share rebuilds (one a second per server process at most), so the item is
    # seldom fenced: without that, two looping clients kept it fenced nearly all the time.
    assert statuses.count(503) < len(statuses) // 4
    final = requests.get(item, headers=bearer(admin), timeout=10).json()
    assert (final["consumed"], final["available"]) == (600, 0)  # sold out, not over


def test_behind_a_buffering_proxy_the_same_app_is_served_over_wsgi(
        config: Config, admin: str, namespace: str) -> None:
    """`serve --behind-buffering-proxy`: granian's WSGI interface, the same app and checks."""
    servers = serve(config, workers=1, wsgi=True)
    base = next(servers)
    try:
        item = f"{base}/v1/{namespace}/items/w"
        assert requests.put(item, json={"total": 3}, headers=bearer(admin), timeout=10).ok
        assert requests.post(f"{item}/decrements", json={"qty": 1}, headers=NO_TOKEN,
                             timeout=10).status_code == 401
        sold = requests.post(f"{item}/decrements", json={"qty": 1}, timeout=10,
                             headers={**bearer(admin), "Idempotency-Key": "w1"})
        assert sold.status_code == 200 and sold.json()["available"] == 2
        # Under WSGI the stock stream answers its first event and ends; EventSource comes back.
        once = requests.get(f"{item}/stream", headers=bearer(admin), timeout=10)
        assert once.headers["Content-Type"].startswith("text/event-stream")
        assert once.text.startswith("event: stock\nid: ") and '"available":2' in once.text
    finally:
        next(servers, None)

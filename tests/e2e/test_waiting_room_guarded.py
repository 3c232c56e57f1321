"""The waiting room tried as an attacker and an operator would (issue 27 off its happy path),
against a real server whose Redis is its own (so that ``INFO commandstats`` counts this
server's commands only) behind a TCP proxy the test partitions: floods of junk tickets, keys
reused under another body, Redis partitioned mid-queue, and the clock's edges (moved on the
scripts' test clock, ADR 0031, never by sleeping)."""

from __future__ import annotations

import dataclasses
import functools
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests
from sqlalchemy.engine import make_url

from allocation.config import Config
from tests.e2e import waiting_room_client as wr
from tests.helpers.processes import PrivateRedis, serve
from tests.helpers.tcp_proxy import TcpProxy, proxy_to

SECRET = "wr-guarded-" + uuid.uuid4().hex
DEADLINE = 8.0  # seconds: a request waits out one Redis socket timeout (5 s), never two


@pytest.fixture(scope="module")
def proxy(own_redis: PrivateRedis) -> Iterator[TcpProxy]:
    with proxy_to(own_redis.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def config(service_config: Config, proxy: TcpProxy) -> Config:
    return dataclasses.replace(service_config, redis_url=f"redis://127.0.0.1:{proxy.port}/0")


@pytest.fixture(scope="module")
def sale_api(config: Config) -> Iterator[str]:
    yield from serve(config, extra_env={"SALE_SECRET": SECRET})


@pytest.fixture
def shop(sale_api: str, namespace: str) -> wr.Shop:
    return wr.Shop(sale_api, namespace)


@pytest.fixture
def clock(own_redis: PrivateRedis, config: Config) -> Iterator[wr.ScriptClock]:
    with closing(wr.ScriptClock(own_redis.url, config)) as moved:
        yield moved


class Commands:
    """The commands Redis runs that name ``needle`` (MONITOR, on a thread, from ``start`` until
    ``stop``): the server's other sales, other namespaces' included, refresh beside them."""

    def __init__(self, url: str, needle: str) -> None:
        self.url, self.needle, self.count = url, needle, 0
        self.stop_word = f"stop-{uuid.uuid4().hex}"
        self.client = redis.Redis.from_url(url, socket_timeout=wr.TIMEOUT)
        self.watching = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with self.client.monitor() as monitor:
            self.watching.set()
            while True:
                command = str(monitor.next_command()["command"])
                if self.stop_word in command:
                    return
                if self.needle in command:
                    self.count += 1

    def __enter__(self) -> Commands:
        self.thread.start()
        assert self.watching.wait(wr.TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        other = redis.Redis.from_url(self.url, socket_timeout=wr.TIMEOUT)
        try:
            other.echo(self.stop_word)
        finally:
            other.close()
        self.thread.join(wr.TIMEOUT)
        self.client.close()


def junk_tickets(real: str, other_sales: str) -> list[str]:
    shaped = secrets.token_urlsafe(40) + "." + secrets.token_urlsafe(20)  # a ticket's shape
    return [secrets.token_urlsafe(random.randint(1, 60)), "x" * 600, "A" * 512,
            "not.base64!!", "%00%ff", "....", shaped, real[:-1], other_sales, *wr.forged(real)]


def test_a_flood_of_junk_tickets_is_404_without_a_redis_command_beside_a_healthy_sale(
        shop: wr.Shop, own_redis: PrivateRedis) -> None:
    shop.open_sale("junk", {"tee": 3}, admit_factor=1)
    shop.open_sale("other", {"cap": 3})
    ticket = shop.ticket_of("junk", "ann")
    junk = junk_tickets(ticket, shop.ticket_of("other", "ann"))
    root = f"{shop.root}/sales/junk/queue"
    session = requests.Session()
    for each in junk:  # every spelling is the ticket's 404, poll and stream alike
        for url in (f"{root}/{each}", f"{root}/{each}/stream"):
            r = session.get(url, headers=wr.NO_TOKEN, timeout=wr.TIMEOUT)
            assert r.status_code in (404, 400), (url, r.status_code, r.text)
            assert "Traceback" not in r.text and "itsdangerous" not in r.text

    def flood(n: int) -> list[int]:
        with requests.Session() as mine:
            return [mine.get(f"{root}/{junk[(n + i) % len(junk)]}"
                             f"{'/stream' if i % 3 == 0 else ''}", headers=wr.NO_TOKEN,
                             timeout=wr.TIMEOUT).status_code for i in range(250)]

    with Commands(own_redis.url, f"{shop.namespace}:junk") as run, ThreadPoolExecutor(8) as pool:
        flooding = [pool.submit(flood, n) for n in range(8)]
        # the sale beside it: its buyer is admitted and buys while the flood runs
        sale_pass = shop.admitted_pass("junk", ticket)
        assert shop.decrement("tee", buyer="ann", sale_pass=sale_pass).status_code == 200
        statuses = [s for f in flooding for s in f.result()]
    sent = len(statuses)
    assert set(statuses) <= {400, 404} and sent == 2000
    # The sale's own steps (each process steps it on twice a second, a few commands each) and
    # the buyer's few calls run meanwhile; one look-up per junk request would be 2,000 more.
    assert 0 < run.count < sent / 4, run.count  # 0: the monitor saw nothing at all
    with shop.stream("junk", ticket) as events:  # no slot was kept by the junk
        assert events.status == 200 and events.next()["state"] == "used"


def test_keys_reused_with_another_body_sell_nothing_more_and_burn_no_pass(
        shop: wr.Shop) -> None:
    shop.open_sale("reuse", {"tee": 5, "cap": 5}, admit_factor=10)
    assert shop.put_sale("reuse", {"skus": ["tee"]}).status_code == 409
    assert shop.put_sale("reuse", {"skus": ["tee", "cap"], "admit_factor": 3}).status_code == 409
    ann, bob = shop.ticket_of("reuse", "ann"), shop.ticket_of("reuse", "bob")
    assert shop.join("reuse", "ann").json()["ticket"] == ann  # the same ticket again
    wr.refused(shop.join("reuse", "ann", {"buyer": "ann", "qty": 2}), 400, "invalid_field")
    ann_pass, bob_pass = shop.admitted_pass("reuse", ann), shop.admitted_pass("reuse", bob)
    key = uuid.uuid4().hex
    assert shop.decrement("tee", buyer="ann", sale_pass=ann_pass, key=key).status_code == 200
    replay = shop.decrement("tee", buyer="ann", sale_pass=ann_pass, key=key)
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    wr.refused(shop.decrement("tee", 2, buyer="ann", sale_pass=ann_pass, key=key),
               422, "idempotency_key_reused")
    # ann's key under bob's pass: refused, and bob's pass is still his to use
    wr.refused(shop.decrement("tee", buyer="bob", sale_pass=bob_pass, key=key),
               422, "idempotency_key_reused")
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=bob_pass, key=key),
               403, "pass_invalid")
    hold = uuid.uuid4().hex
    made = shop.reserve([{"sku": "cap", "qty": 1}], buyer="bob", sale_pass=bob_pass, key=hold)
    assert made.status_code == 201, made.text
    carl = shop.ticket_of("reuse", "carl")
    carl_pass = shop.admitted_pass("reuse", carl)
    wr.refused(shop.reserve([{"sku": "cap", "qty": 1}], buyer="carl", sale_pass=carl_pass,
                            key=hold), 422, "idempotency_key_reused")
    assert shop.decrement("cap", buyer="carl", sale_pass=carl_pass).status_code == 200
    assert (shop.figures("tee")["consumed"], shop.figures("cap")["held"],
            shop.figures("cap")["consumed"]) == (1, 1, 1)


def within(deadline: float, call: Callable[[], requests.Response]) -> requests.Response:
    started = time.monotonic()
    answer = call()
    assert time.monotonic() - started < deadline, "no answer within the request's deadline"
    return answer


def answered_or_retry(r: requests.Response, *ok: int) -> None:
    assert r.status_code in (*ok, 503), (r.status_code, r.text)
    if r.status_code == 503:
        assert r.headers.get("Retry-After") and r.json()["error"] == "unavailable"


def test_redis_partitioned_mid_queue_every_request_answers_and_nothing_is_given_twice(
        shop: wr.Shop, proxy: TcpProxy) -> None:
    shop.open_sale("cut", {"tee": 2}, admit_factor=1)
    tickets = [shop.ticket_of("cut", f"b{n}") for n in range(4)]
    first_pass = shop.admitted_pass("cut", tickets[0])
    proxy.partition()
    try:
        with ThreadPoolExecutor(12) as pool:
            polls = [pool.submit(within, DEADLINE, functools.partial(shop.poll, "cut", t))
                     for t in tickets * 2]
            joins = [pool.submit(within, DEADLINE, functools.partial(shop.join, "cut",
                                                                     f"late{n}"))
                     for n in range(3)]
            buys = [pool.submit(within, DEADLINE, lambda: shop.decrement(
                "tee", buyer="b0", sale_pass=first_pass))]
            for f in polls:
                answered_or_retry(f.result(), 200)
            for f in joins:
                answered_or_retry(f.result(), 200, 201)
            for f in buys:
                answered_or_retry(f.result(), 200)
    finally:
        proxy.heal()
    wr.until(lambda: shop.read("cut", tickets[1])["state"], lambda s: s == "admitted", 15,
             "the queue to move again once Redis is back")
    bought = shop.decrement("tee", buyer="b0", sale_pass=first_pass)
    second = shop.decrement("tee", buyer="b1",
                            sale_pass=shop.admitted_pass("cut", tickets[1]))
    assert second.status_code == 200, second.text
    assert bought.status_code in (200, 403)  # sold now, or the unknown end counted it used
    assert shop.figures("tee")["consumed"] <= 2


def test_redis_refused_answers_at_once_and_the_queue_resumes(shop: wr.Shop,
                                                              proxy: TcpProxy) -> None:
    shop.open_sale("refused", {"tee": 1}, admit_factor=1)
    first, second = shop.ticket_of("refused", "ann"), shop.ticket_of("refused", "bob")
    ann_pass = shop.admitted_pass("refused", first)
    proxy.refuse()
    try:
        answered_or_retry(within(DEADLINE, lambda: shop.join("refused", "carl")), 200, 201)
        answered_or_retry(within(DEADLINE, lambda: shop.poll("refused", second)), 200)
        answered_or_retry(within(DEADLINE, lambda: shop.decrement(
            "tee", buyer="ann", sale_pass=ann_pass)), 200)
        answered_or_retry(within(DEADLINE, lambda: shop.sale("refused")), 200)
    finally:
        proxy.restore()
    bought = wr.until(lambda: shop.decrement("tee", buyer="ann", sale_pass=ann_pass),
                      lambda r: r.status_code != 503, 10, "Redis back")
    assert bought.status_code in (200, 403), bought.text  # 403: a claim whose end was unknown
    if bought.status_code == 200:
        shop.reads("refused", second, "sold_out", 5)
    assert shop.figures("tee")["consumed"] <= 1


def test_a_pass_used_at_exactly_its_expiry_is_refused_and_a_moment_before_is_not(
        shop: wr.Shop, clock: wr.ScriptClock) -> None:
    shop.open_sale("edge", {"tee": 3}, admit_factor=1, pass_ttl_seconds=30)
    ann, bob = shop.ticket_of("edge", "ann"), shop.ticket_of("edge", "bob")
    clock.move(0)  # stopped: the scripts' now is what the test says
    ann_shown = wr.until(lambda: shop.read("edge", ann), lambda t: t["state"] == "admitted",
                         10, "ann admitted")
    bob_shown = wr.until(lambda: shop.read("edge", bob), lambda t: t["state"] == "admitted",
                         10, "bob admitted")
    expires = wr.moment(ann_shown["pass_expires_at"])
    now = datetime.fromtimestamp(int(clock.client.get(clock.keys.clock(0)) or 0) / 1000, UTC)
    clock.move((expires - now).total_seconds())  # exactly pass_expires_at
    wr.refused(shop.decrement("tee", buyer="ann", sale_pass=ann_shown["pass"]),
               403, "pass_invalid")
    clock.move(-0.001)  # a moment before: bob, admitted with or after ann, still buys
    assert wr.moment(bob_shown["pass_expires_at"]) >= expires
    assert shop.decrement("tee", buyer="bob", sale_pass=bob_shown["pass"]).status_code == 200
    assert shop.figures("tee")["consumed"] == 1


def test_a_sale_closed_while_buyers_hold_passes_and_holds(shop: wr.Shop) -> None:
    shop.open_sale("shut", {"tee": 2}, admit_factor=2)
    ann, bob = shop.ticket_of("shut", "ann"), shop.ticket_of("shut", "bob")
    carl = shop.ticket_of("shut", "carl")
    ann_pass = shop.admitted_pass("shut", ann)
    made = shop.reserve([{"sku": "tee", "qty": 1}], buyer="ann", sale_pass=ann_pass)
    assert made.status_code == 201, made.text
    bob_pass = shop.admitted_pass("shut", bob)
    assert shop.close("shut").status_code == 200
    confirmed = shop.reservation(made.json()["id"], "confirm")
    assert confirmed.status_code == 200, confirmed.text  # a hold made under the pass stands
    for ticket in (ann, bob, carl):
        shop.reads("shut", ticket, "closed")
    wr.refused(shop.join("shut", "dora"), 409, "sale_closed")
    # ungated: the sku sells as any other, bob's pass or none
    assert shop.decrement("tee", buyer="bob", sale_pass=bob_pass).status_code == 200
    wr.refused(shop.decrement("tee", buyer="carl"), 409, "insufficient_stock")
    assert shop.figures("tee")["consumed"] == 2


def test_opens_at_in_the_past_is_open_at_once_first_come_first_served(shop: wr.Shop) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    made = shop.open_sale("late", {"tee": 2}, admit_factor=1, opens_at=wr.iso(past))
    assert made["state"] == "open"
    tickets = [shop.ticket_of("late", f"b{n}") for n in range(4)]
    order = wr.until(lambda: shop.serving_order("late", tickets, 2), lambda o: o is not None,
                     5, "two admitted, the rest waiting in order")
    assert order == [0, 1, 2, 3]
    again = shop.put_sale("late", {"skus": ["tee"], "admit_factor": 1, "opens_at": wr.iso(past)})
    assert again.status_code == 200, again.text


@pytest.fixture
def record_cut(service_config: Config, database_url: str) -> Iterator[tuple[wr.Shop, TcpProxy]]:
    """A server whose database is behind a proxy the test partitions (its Redis the run's)."""
    with proxy_to(make_url(database_url).port or 5432) as tcp:
        config = dataclasses.replace(
            service_config, database_url=make_url(service_config.database_url).set(
                host="127.0.0.1", port=tcp.port).render_as_string(hide_password=False),
            redis_key_prefix=f"{service_config.redis_key_prefix}:d{uuid.uuid4().hex[:8]}")
        try:
            with contextmanager(serve)(config, extra_env={"SALE_SECRET": SECRET}) as base:
                yield wr.Shop(base, f"dbcut{uuid.uuid4().hex[:6]}"), tcp
        finally:
            tcp.heal()


def test_the_record_partitioned_keeps_the_gates_and_the_polls_and_refuses_in_time(
        record_cut: tuple[wr.Shop, TcpProxy]) -> None:
    shop, tcp = record_cut
    shop.open_sale("dark", {"tee": 3}, admit_factor=1)
    tickets = [shop.ticket_of("dark", f"b{n}") for n in range(5)]
    first_pass = shop.admitted_pass("dark", tickets[0])
    tcp.partition()
    # The refresh threads now fail on the record; for longer than a refresh (0.5 s) and a
    # poll's lag: the skus stay gated and the waiting tickets keep answering, from Redis.
    for reading in wr.observe(lambda: (shop.poll("dark", tickets[4]),
                                       shop.decrement("tee", buyer="eve")), 3):
        poll, passless = reading
        assert (poll.status_code, poll.json()["state"]) == (200, "waiting"), poll.text
        wr.refused(passless, 403, "pass_required")
    made = within(DEADLINE, lambda: shop.put_sale("dusk", {"skus": ["tee"]}))
    answered_or_retry(made)
    assert made.status_code == 503
    closing_now = within(DEADLINE, lambda: shop.close("dark"))
    answered_or_retry(closing_now)
    assert closing_now.status_code == 503
    assert shop.decrement("tee", buyer="b0", sale_pass=first_pass).status_code == 200
    tcp.heal()
    assert shop.close("dark").status_code == 200
    wr.until(lambda: shop.decrement("tee", buyer="eve").status_code, lambda s: s == 200, 5,
             "the sku ungated once the sale closed")
    assert shop.figures("tee")["consumed"] == 2

"""The ``allocation`` command. Exit codes: 0 success, 1 domain refusal, 2 usage or input error,
3 a dependency is unavailable."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import click
import redis
from pydantic import TypeAdapter, ValidationError

from allocation import views
from allocation.bootstrap import Application, bootstrap
from allocation.config import Config
from allocation.domain import commands, errors
from allocation.domain.outcome import Outcome
from allocation.entrypoints import (
    cpu_pinning,
    ledger_worker,
    replies,
    sale_cli,
    schemas,
    sweeper,
    token_cli,
    worker_start,
)
from allocation.runtime.process import Loop, ProcessLoops
from allocation.service_layer.results import Reservation

F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")
logger = logging.getLogger(__name__)


def _app() -> Application:
    config = Config.from_env()
    if config.embedded:
        # A short-lived process with an in-process outbox: each command returns once its own
        # writer has committed it, so nothing is left unwritten at exit.
        config = dataclasses.replace(config, durability="sync")
    app = bootstrap(config)
    if config.embedded:
        ledger_worker.for_app(app).start_thread()
    return app


def _show(outcome: Outcome, namespace: str, sku: str) -> None:
    click.echo(json.dumps(replies.item_body(namespace, sku, outcome)))


def _checked(namespace: str, sku: str | None = None) -> None:
    """Names by the rules every entry point shares; a bad one is a usage error (exit 2)."""
    try:
        schemas.check_name(namespace, "namespace")
        if sku is not None:
            schemas.check_name(sku, "sku")
    except errors.InvalidInput as exc:
        raise click.UsageError(f"invalid {exc.message}") from None


# A decimal integer as typed: ASCII digits with an optional sign (no "1.5", "1_000", "0x10",
# " 5" or "²"); then the shared rule's range.
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


def _integer(text: str) -> int | None:
    return int(text) if _INTEGER.fullmatch(text) else None


class _Checked(click.ParamType[V]):
    """An argument checked by one of the shared rules (``schemas.check_*``)."""

    def __init__(self, field: str, check: Callable[[object, str], V], integer: bool) -> None:
        self.name = field
        self.field, self.check, self.integer = field, check, integer

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> V:
        parsed = _integer(value) if self.integer and isinstance(value, str) else value
        if parsed is None:
            self.fail(f"{self.field}: must be a whole number, got {value!r}", param, ctx)
        try:
            return self.check(parsed, self.field)
        except errors.InvalidInput as exc:
            self.fail(exc.message, param, ctx)


def _check_ttl(value: object, field: str = "ttl_seconds") -> int:
    """1..86400 seconds, by the HTTP body's own rule (``ExtendBody``)."""
    try:
        return schemas.ExtendBody.model_validate({"ttl_seconds": value}).ttl_seconds
    except ValidationError as exc:
        raise errors.InvalidInput(field, f"{field}: {exc.errors()[0]['msg']}, got {value!r}"
                                  ) from None


_RESERVATION_ID: TypeAdapter[str] = TypeAdapter(schemas.ReservationId)


def _check_reservation_id(value: object, field: str = "reservation_id") -> str:
    try:
        return _RESERVATION_ID.validate_python(value, strict=True)
    except ValidationError:
        raise errors.InvalidInput(field, f"{field}: must be 1 to 64 letters, digits, '.', '_' "
                                  f"or '-', got {value!r}") from None


class _LineParam(click.ParamType[tuple[str, int]]):
    """A reservation line as typed, ``SKU:QTY``, checked by the shared rules."""

    name = "SKU:QTY"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        sku, colon, qty = str(value).rpartition(":")
        parsed = _integer(qty)
        if not colon or parsed is None:
            self.fail(f"a line is SKU:QTY with a whole number QTY, got {value!r}", param, ctx)
        try:
            return schemas.check_name(sku, "sku"), schemas.check_qty(parsed)
        except errors.InvalidInput as exc:
            self.fail(f"{value!r}: {exc.message}", param, ctx)


TOTAL = _Checked("total", schemas.check_total, integer=True)
DELTA = _Checked("delta", schemas.check_delta, integer=True)
QTY = _Checked("qty", schemas.check_qty, integer=True)
KEY = _Checked("idempotency_key", schemas.check_idempotency_key, integer=False)
BUYER = _Checked("buyer", schemas.check_buyer, integer=False)
LIMIT = _Checked("limit_per_buyer", schemas.check_limit, integer=True)
TTL = _Checked("ttl_seconds", _check_ttl, integer=True)
RESERVATION_ID = _Checked("reservation_id", _check_reservation_id, integer=False)
LINE = _LineParam()
MAX_LINES = 100  # as ReserveBody allows


def domain_exit(fn: F) -> F:
    """Turn refusals and outages into messages and exit codes instead of tracebacks."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.InvalidInput as exc:  # input, not a refusal: a usage error's exit code
            click.echo(f"invalid {exc.message}", err=True)
            sys.exit(2)
        except errors.DomainError as exc:
            click.echo(f"refused: {exc.code}: {exc.message}", err=True)
            sys.exit(1)
        except errors.Unavailable as exc:
            click.echo(f"unavailable: {exc.message}", err=True)
            sys.exit(3)
    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """Flash-sale inventory: a Redis fast path over a PostgreSQL ledger."""


@main.command()
def migrate() -> None:
    """Bring the database schema to the latest revision (Alembic)."""
    # Imported here, as serve's app is: Alembic and Flask would double every other command's
    # start-up, which operators and scripts wait for.
    from allocation.adapters import migrate as migrations

    config = Config.from_env()
    migrations.upgrade(config.database_url)
    click.echo(f"migrated {config.database_url.split('@')[-1]}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", type=int, default=None,
              help="worker processes (default: the cores; 1 in the embedded mode)")
@click.option("--threads", type=int, default=8, show_default=True,
              help="threads per worker running requests")
@click.option("--pin-workers", is_flag=True,
              help="hold each worker process to a core of its own (Linux); off where the "
                   "server's cores are shared with other busy services (README, Scaling out)")
@click.option("--behind-buffering-proxy", is_flag=True,
              help="serve granian's WSGI interface: more sales a second, but a client that "
                   "sends its body slowly holds a request thread; only behind a proxy that "
                   "reads bodies whole before passing them on (nginx does by default)")
def serve(host: str, port: int, workers: int | None, threads: int, pin_workers: bool,
          behind_buffering_proxy: bool) -> None:
    """Serve the HTTP API with granian (its RSGI interface; WSGI behind a buffering proxy)."""
    if pin_workers and not cpu_pinning.supported():
        raise click.UsageError("--pin-workers needs Linux (sched_setaffinity, /proc)")
    config = Config.from_env()
    _raise_open_file_limit()
    if config.embedded:
        workers = 1  # the embedded Redis is one process's own
    workers = workers or os.cpu_count() or 1
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="allocation-metrics-")
    if pin_workers:
        os.environ[cpu_pinning.ENV] = tempfile.mkdtemp(prefix="allocation-cpus-")
    if workers > 1:  # /readyz waits for all of them (worker_start)
        os.environ[worker_start.DIR_ENV] = tempfile.mkdtemp(prefix="allocation-workers-")
        os.environ[worker_start.COUNT_ENV] = str(workers)
    # granian rather than gunicorn's gthread worker: more decrements at a lower p99 on the same
    # cores (docs/adr/0004-granian-and-the-fast-lane.md).
    from allocation.entrypoints import flask_app

    os.environ[flask_app.THREADS_ENV] = str(threads)
    # RSGI by default: the event loop reads bodies, so a slow client holds no request thread
    # (entrypoints/rsgi_bridge.py); the app itself is WSGI either way (docs/adr/0013).
    interface, factory = (("wsgi", "create_wsgi_server_app") if behind_buffering_proxy
                          else ("rsgi", "create_server_app"))
    argv = [sys.executable, "-m", "granian", "--interface", interface, "--factory",
            "--host", host, "--port", str(port), "--workers", str(workers),
            *(["--blocking-threads", str(threads)] if behind_buffering_proxy else
              # Open stock streams count as requests in flight; granian's default (backlog /
              # workers, 512 here) would queue everything else behind a thousand of them.
              # The app's own thread pool bounds the work that needs a thread.
              ["--backpressure", "65536"]),
            "--http1-header-read-timeout", "10000", "--workers-kill-timeout", "10",
            "--respawn-failed-workers",
            # ACCESS_LOG (any value) logs each request; off, a write per request costs much of
            # the throughput of a busy small machine.
            "--access-log" if os.environ.get("ACCESS_LOG") else "--no-access-log",
            f"allocation.entrypoints.flask_app:{factory}"]
    os.execv(sys.executable, argv)


def _raise_open_file_limit() -> None:
    """Every connection takes a file descriptor, an open stock stream one for as long as it
    lasts; the common soft limit (1024) would leave a worker unable to accept. Raised here, the
    limit is inherited by granian and each of its workers (they size their stream cap by it)."""
    import resource

    from allocation.entrypoints import stock_stream

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    except (ValueError, OSError) as exc:  # an unlimited hard limit is above the kernel's
        click.echo(f"open files: could not raise the limit to {hard}: {exc}", err=True)
    click.echo(f"open files: limit {soft} a process; up to {stock_stream.process_cap(soft)} "
               "stock streams a worker", err=True)


@main.command()
@click.option("--name", default=None, help="this consumer's name in the stream's group "
              "(default: host and pid; keep it stable across restarts to resume its entries)")
@click.option("--health-port", type=click.IntRange(1, 65535), default=None,
              envvar="CONSUMER_HEALTH_PORT",
              help="serve GET /healthz, /readyz and /metrics on this port (default: none)")
@click.option("--health-host", default="127.0.0.1", show_default=True,
              help="the address the health port is bound to")
@click.option("--max-deliveries", type=click.IntRange(1, 1000), default=5, show_default=True,
              envvar="COMMAND_MAX_DELIVERIES",
              help="a stream entry that failed this many times goes to <stream>:dead")
@click.option("--claim-idle-ms", type=click.IntRange(1), default=30_000, show_default=True,
              envvar="COMMAND_CLAIM_IDLE_MS",
              help="another consumer's entries pending this long are taken over")
def consume(name: str | None, health_port: int | None, health_host: str, max_deliveries: int,
            claim_idle_ms: int) -> None:
    """Apply commands from the pub/sub channel and from the command stream; answer on the
    events channel."""
    from allocation.entrypoints import redis_consumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    redis_consumer.run(_app(), name or f"{socket.gethostname()}-{os.getpid()}",
                       max_deliveries=max_deliveries, claim_idle_ms=claim_idle_ms,
                       health_host=health_host, health_port=health_port)


@main.command("ledger-worker")
@click.option("--threads", default=ledger_worker.DEFAULT_THREADS, show_default=True,
              type=click.IntRange(1, 64),
              help="writers in this process, each taking its share of the partitions")
@click.option("--idle-priority", is_flag=True,
              help="run only on CPU time nothing else wants (Linux SCHED_IDLE): for a worker "
              "that shares cores with API servers")
@click.option("--name", default=None,
              help="this worker's name in the outbox's consumer group (default: host, pid and "
              "a random tag). Kept across restarts, and given to no other worker, it lets a "
              "worker restarted after a crash write at once the entries it had read, rather "
              "than after LEDGER_CLAIM_IDLE_MS")
def run_ledger_worker(threads: int, idle_priority: bool, name: str | None) -> None:
    """Write the outbox to the ledger in PostgreSQL (run one or more)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if idle_priority:
        try:
            ledger_worker.yield_cpu()  # before the writer threads start: they inherit it
        except (RuntimeError, OSError) as exc:
            raise click.UsageError(f"--idle-priority: {exc}") from exc
    ledger_worker.run(bootstrap(Config.from_env()), threads=threads, name=name)


@main.command()
@click.argument("namespace")
@click.option("--repair", is_flag=True,
              help="rebuild the items that differ or that Redis lacks")
@domain_exit
def drift(namespace: str, repair: bool) -> None:
    """Compare Redis with the database plus the unwritten outbox; exit 1 if any item differs
    or is missing from Redis."""
    from allocation.service_layer import drift as drift_check

    _checked(namespace)
    app = _app()
    found = drift_check.find(namespace, app.uow_factory(), app.counter, app.outbox)
    if app.redis is not None:
        app.redis.hset(app.health.keys.drift(), namespace, len(found))
    if not found:
        click.echo(f"{namespace}: no drift")
        return
    click.echo(f"{'sku':<30} {'expected (total, consumed, held)':<34} "
               "redis (total, consumed, held)")
    for d in found:
        click.echo(f"{d.sku:<30} {d.expected!s:<34} {'missing' if d.missing else d.redis}")
    if repair:
        for d in found:
            app.bus.handle(commands.Refresh(namespace, d.sku))
        click.echo(f"repaired {len(found)} items")
        return
    sys.exit(1)


@main.command()
@click.argument("namespace")
@click.argument("sku")
@click.argument("total", type=TOTAL)
@click.option("--limit-per-buyer", type=LIMIT, help="units each buyer may take at most")
@domain_exit
def init(namespace: str, sku: str, total: int, limit_per_buyer: int | None) -> None:
    """Set an item's stock."""
    _checked(namespace, sku)
    _show(_app().bus.handle(commands.InitInventory(namespace, sku, total, limit_per_buyer)),
          namespace, sku)


@main.command()
@click.argument("namespace")
@click.argument("sku")
@click.argument("limit")
@domain_exit
def limit(namespace: str, sku: str, limit: str) -> None:
    """Set the units each buyer may take of an item (LIMIT), or lift the limit ("none")."""
    _checked(namespace, sku)
    per_buyer = None if limit == "none" else LIMIT.convert(limit, None, None)
    _show(_app().bus.handle(commands.SetLimit(namespace, sku, per_buyer)), namespace, sku)


def _movement(kind: str) -> Callable[..., None]:
    @click.argument("namespace")
    @click.argument("sku")
    @click.argument("qty", type=DELTA if kind == "adjust" else QTY)
    @click.option("--key", type=KEY, help="idempotency key (a fresh one when omitted)")
    @click.option("--buyer", type=BUYER, hidden=kind == "adjust",
                  help="the buyer (required where the item has a limit per buyer)")
    @domain_exit
    def move(namespace: str, sku: str, qty: int, key: str | None, buyer: str | None) -> None:
        _checked(namespace, sku)
        command: commands.Command
        if kind == "adjust":
            if buyer is not None:
                raise click.UsageError("an adjustment names no buyer")
            command = commands.AdjustTotal(namespace, sku, qty, key)
        else:
            cls = commands.Decrement if kind == "decrement" else commands.Refund
            command = cls(namespace, sku, qty, key or uuid.uuid4().hex, buyer)
        _show(_app().bus.handle(command).raise_for_status(), namespace, sku)
    return move


main.command("adjust", help="Change an item's total by DELTA (QTY).")(_movement("adjust"))
main.command("decrement", help="Sell QTY units.")(_movement("decrement"))
main.command("refund", help="Return QTY sold units.")(_movement("refund"))


def _show_reservation(made: Reservation) -> None:
    click.echo(json.dumps(replies.reservation_body(made)))


@main.command()
@click.argument("namespace")
@click.argument("lines", nargs=-1, required=True, type=LINE)
@click.option("--ttl", type=TTL, default=600, show_default=True,
              help="seconds the units are held (1..86400)")
@click.option("--buyer", type=BUYER,
              help="the buyer (required where an item has a limit per buyer)")
@click.option("--key", type=KEY, help="idempotency key (a fresh one when omitted); the same "
              "key and lines again answer the same reservation")
@domain_exit
def reserve(namespace: str, lines: tuple[tuple[str, int], ...], ttl: int, buyer: str | None,
            key: str | None) -> None:
    """Hold every line (SKU:QTY ...) while a buyer pays, or none; print the reservation."""
    _checked(namespace)
    if len(lines) > MAX_LINES:
        raise click.UsageError(f"at most {MAX_LINES} lines, got {len(lines)}")
    _show_reservation(_app().bus.handle(commands.Reserve(
        namespace, lines, key or uuid.uuid4().hex, ttl, buyer)))


def _ending(command: type[commands.ConfirmReservation | commands.ReleaseReservation]
            ) -> Callable[..., None]:
    @click.argument("namespace")
    @click.argument("reservation_id", metavar="ID", type=RESERVATION_ID)
    @domain_exit
    def end(namespace: str, reservation_id: str) -> None:
        _checked(namespace)
        _show_reservation(_app().bus.handle(command(namespace, reservation_id)))
    return end


main.command("confirm", help="Sell a reservation's held units (again: the same answer).")(
    _ending(commands.ConfirmReservation))
main.command("release", help="Put a reservation's held units back on sale (again: the same "
             "answer).")(_ending(commands.ReleaseReservation))


@main.command()
@click.option("--interval", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True,
              help="seconds between passes")
@click.option("--once", is_flag=True, help="one pass; print how many items it visited")
@domain_exit
def sweep(interval: float, once: bool) -> None:
    """End holds that are due on items nobody touches (their ReservationExpired events are
    published as they end). Every step that touches an item ends its due holds itself; this
    keeps the figures of the others, as read, within about an interval of the truth."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = Config.from_env()
    if config.embedded:
        raise SystemExit("the sweeper needs REDIS_URL: in the embedded mode the holds live in "
                         "the serving process's own counter")
    counter = bootstrap(config).counter
    if once:
        try:
            visited = counter.sweep()
        except redis.RedisError as exc:  # not wrapped as Unavailable: exit 3 all the same
            raise errors.Unavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        click.echo(f"visited {visited} items")
        return
    stopping = threading.Event()
    logger.info("sweeping due holds every %.2fs", interval)
    # SIGTERM or Ctrl-C ends the wait between passes; a pass under way finishes first.
    ProcessLoops([Loop("sweeper", lambda: sweeper.sweep_loop(counter, interval, stopping),
                       stopping.set)], if_one_ends="fail").run()
    logger.info("sweeper stopped")


@main.command()
@click.argument("namespace")
@click.argument("sku")
@domain_exit
def get(namespace: str, sku: str) -> None:
    """Show an item's stock."""
    _checked(namespace, sku)
    _show(views.item(_app(), namespace, sku), namespace, sku)


@main.command()
@click.argument("namespace")
@click.argument("sku")
@click.option("--after-seq", type=click.IntRange(0), default=0)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100)
@domain_exit
def ledger(namespace: str, sku: str, after_seq: int, limit: int) -> None:
    """Print an item's ledger, one JSON entry a line."""
    _checked(namespace, sku)
    for e in views.ledger(_app(), namespace, sku, after_seq, limit):
        click.echo(json.dumps(replies.ledger_entry(e)))


@main.command()
@click.argument("namespace")
@click.argument("sku", required=False)
@click.option("--all", "everything", is_flag=True, help="every item of NAMESPACE")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000)
@domain_exit
def refresh(namespace: str, sku: str | None, everything: bool, batch_size: int) -> None:
    """Rebuild counters from the database: one item, or --all of a namespace."""
    _checked(namespace, sku)
    bus = _app().bus
    if sku and not everything:
        _show(bus.handle(commands.Refresh(namespace, sku)), namespace, sku)
        return
    if not everything:
        raise click.UsageError("name a SKU, or pass --all")
    done, after = 0, None
    with click.progressbar(length=0, label=f"refreshing {namespace}",
                           show_pos=True) as bar:
        while True:
            step = bus.handle(commands.RefreshAll(namespace, after, batch_size, batches=1))
            done += step.refreshed
            bar.length = done
            bar.update(step.refreshed)
            if step.after is None:
                break
            after = step.after
    click.echo(f"refreshed {done} items")


@main.command("import")
@click.argument("namespace")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@domain_exit
def import_items(namespace: str, file: TextIO) -> None:
    """Initialise many items from a CSV of `sku,total` rows (a header row is allowed).
    Every row is checked first; one bad row or clash and nothing is imported."""
    _checked(namespace)
    rows = list(csv.reader(file))
    if rows and rows[0] and rows[0][0].strip().lower() == "sku":
        rows = [["sku", "total"], *rows[1:]]
        start = 2
    else:
        rows = [["sku", "total"], *rows]
        start = 1
    items: dict[str, int] = {}
    problems: list[str] = []
    with click.progressbar(rows[1:], label="checking rows") as bar:
        for line, row in enumerate(bar, start=start):
            problem = _row_problem(row, items)
            if problem:
                problems.append(f"line {line}: {problem}")
            else:
                items[row[0].strip()] = int(row[1].strip())
    if problems:
        click.echo(f"{len(problems)} bad rows, nothing imported:", err=True)
        for problem in problems[:50]:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    created = _app().bus.handle(commands.InitMany(namespace, tuple(items.items())))
    click.echo(f"imported {len(items)} items into {namespace} ({created} new)")


def _row_problem(row: list[str], seen: dict[str, int]) -> str | None:
    if len(row) != 2:
        return f"expected 2 fields (sku,total), got {len(row)}"
    sku, total = row[0].strip(), row[1].strip()
    try:
        schemas.check_name(sku, "sku")
    except errors.InvalidInput:
        return f"invalid sku {sku!r}"
    try:
        schemas.check_total(_integer(total))
    except errors.InvalidInput:
        return f"total must be an integer from 0 to 1000000000, got {total!r}"
    if sku in seen:
        return f"sku {sku!r} appears twice"
    return None


main.add_command(token_cli.token)
main.add_command(sale_cli.sale)

if __name__ == "__main__":
    main()

"""The commands that run a process until it is stopped: ``serve``, ``consume``,
``ledger-worker`` and ``sweep``."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys
import tempfile
import threading

import click
import redis

from allocation.bootstrap import bootstrap
from allocation.config import Config
from allocation.domain import errors
from allocation.entrypoints import cpu_pinning, ledger_worker, sweeper, worker_start
from allocation.entrypoints.cli_params import application, domain_exit, log_to_stderr
from allocation.runtime.process import Loop, ProcessLoops

logger = logging.getLogger(__name__)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the IP address to listen on (granian binds no host names)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="worker processes (default: the cores; 1 in the embedded mode)")
@click.option("--threads", type=click.IntRange(1, 1024), default=8, show_default=True,
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
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise click.BadParameter(f"{host!r} is not an IP address", param_hint="--host") from None
    # granian's workers each bind the port with SO_REUSEPORT, so they would share it with a
    # server already there (another deployment's, another database's) rather than fail.
    check_free(host, port, "--port", "--host")
    config = Config.from_env()
    if not os.environ.get("DATABASE_URL"):
        # The embedded SQLite file, made or brought up to date here (as `make run` does): else
        # the server looks ready and answers every request 503.
        from allocation.adapters import migrate as migrations

        migrations.upgrade(config.database_url)
        click.echo(f"migrated {config.database_url}", err=True)
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
    # cores (docs/adr/0004-granian-and-the-fast-lane.md). Imported here: Flask would double
    # every other command's start-up, which operators and scripts wait for.
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


def check_free(host: str, port: int, option: str, host_option: str) -> None:
    """A usage error (exit 2) unless this process could listen on ``host:port``: the host is not
    one of this machine's addresses, or another process listens there."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise click.BadParameter(f"cannot listen on {host!r}: {exc}",
                                 param_hint=host_option) from None
    with socket.socket(family, kind, proto) as probe:
        # As granian's and http.server's listeners do: a closed connection's TIME_WAIT is no
        # obstacle, a listener is. No SO_REUSEPORT: that would share the port with it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = ("another process listens there" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            raise click.BadParameter(
                f"cannot listen on {host}:{port}: {why}",
                param_hint=host_option if exc.errno == errno.EADDRNOTAVAIL else option
            ) from None


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


@click.command()
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

    if health_port is not None:
        check_free(health_host, health_port, "--health-port", "--health-host")
    log_to_stderr()
    redis_consumer.run(application(), name or f"{socket.gethostname()}-{os.getpid()}",
                       max_deliveries=max_deliveries, claim_idle_ms=claim_idle_ms,
                       health_host=health_host, health_port=health_port)


@click.command("ledger-worker")
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
    log_to_stderr()
    if idle_priority:
        try:
            ledger_worker.yield_cpu()  # before the writer threads start: they inherit it
        except (RuntimeError, OSError) as exc:
            raise click.UsageError(f"--idle-priority: {exc}") from exc
    ledger_worker.run(bootstrap(Config.from_env()), threads=threads, name=name)


@click.command()
@click.option("--interval", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True,
              help="seconds between passes")
@click.option("--once", is_flag=True, help="one pass; print how many items it visited")
@domain_exit
def sweep(interval: float, once: bool) -> None:
    """End holds that are due on items nobody touches (their ReservationExpired events are
    published as they end). Every step that touches an item ends its due holds itself; this
    keeps the figures of the others, as read, within about an interval of the truth."""
    log_to_stderr()
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


COMMANDS = (serve, consume, run_ledger_worker, sweep)

"""A real Redis Cluster on loopback, for tests: redis-server processes with cluster mode on, joined
by `redis-cli --cluster create`, torn down afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster


def _free_cluster_port() -> int:
    """A port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            port -= 20000
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports for a cluster node")


class LocalCluster:
    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0) -> None:
        self.workdir = workdir
        self.ports = [_free_cluster_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed to start a cluster")
        for port in self.ports:
            self.start_node(port)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok(60)

    def start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1500",
             "--save", "", "--appendonly", "no", "--dir", str(node_dir),
             "--repl-diskless-sync-delay", "0",
             "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"cluster node {port} did not start")

    def wait_ok(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(self._node_ok(p) for p in self.live_ports()):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def _node_ok(self, port: int) -> bool:
        """Serving every slot, and a replica only once it has synced (else it cannot fail
        over)."""
        try:
            replication = redis.Redis(port=port).info("replication")
        except redis.RedisError:
            return False
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            return False
        return self._cluster_ok(port)

    def _cluster_ok(self, port: int) -> bool:
        try:
            info = redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER INFO")
        except redis.RedisError:
            return False
        if isinstance(info, dict):  # redis-py parses the reply
            info = "\n".join(f"{k}:{v}" for k, v in info.items())
        return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def client(self) -> RedisCluster[bytes]:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p)
                                           for p in self.live_ports()])

    def masters(self) -> list[int]:
        nodes = self.client().cluster_nodes()  # type: ignore[no-untyped-call]
        return sorted(int(address.split(":")[1].split("@")[0])
                      for address, node in nodes.items()
                      if "master" in node["flags"] and "fail" not in node["flags"])

    def owner(self, key: str) -> int:
        """The port of the master that holds ``key``."""
        node = self.client().get_node_from_key(key)
        assert node is not None
        return int(node.port)

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def started_cluster(workdir: Path, replicas: int = 0) -> Iterator[LocalCluster]:
    """A running cluster for the block; a failure to start fails the test, naming why."""
    cluster = LocalCluster(workdir, masters=3, replicas=replicas)
    try:
        cluster.start()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        cluster.stop()
        pytest.fail(f"could not start a Redis Cluster on loopback: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()

"""A real Prometheus server scrapes `asok serve --gevent` at Asok's metrics path, with its bearer token.

The test writes Prometheus' configuration, starts Debian's `prometheus` on a free
loopback port with its data in a temporary directory, lets it scrape every
second, and asks its HTTP API for the connection gauges once clients connect:
one process, then `--workers 2` on Redis (figures summed over both workers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.asok_project import make_project, project_env
from tests.cluster_support import node_env
from tests.conftest import BIN, ServerProcess, asok_serve, free_port, stop_process

pytestmark = pytest.mark.timeout(100)

TOKEN = "scrape-me-9f2c"


def need_prometheus() -> str:
    """The path of Debian's prometheus; skipped without it (scripts/test installs it as root)."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus is not installed: `apt-get install -y prometheus`")
    return path


class Prometheus:
    """A prometheus server scraping ``target`` (host:port) every second, its TSDB in ``folder``."""

    def __init__(self, folder, target: str, metrics_path: str = "/metrics", token: str = TOKEN):
        """Write the configuration and start; wait until it is ready."""
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: asok_green\n"
            f"    metrics_path: {metrics_path}\n"
            "    authorization:\n"
            f"      credentials: {token}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                need_prometheus(),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus was not ready in time")

    def query(self, expr: str) -> list:
        """The instant vector ``expr`` evaluates to now: a list of (labels, value)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def wait_for(self, expr: str, expected: float, timeout: float = 30) -> None:
        """Wait until ``expr`` has exactly one series, valued ``expected``."""
        deadline = time.monotonic() + timeout
        last: list = []
        while time.monotonic() < deadline:
            last = self.query(expr)
            if len(last) == 1 and last[0][1] == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr} never became {expected}: last {last}")

    def scrape_health(self) -> list:
        """The scrape targets' health, as Prometheus reports it."""
        with urllib.request.urlopen(self.url + "/api/v1/targets", timeout=5) as response:
            return [t["health"] for t in json.load(response)["data"]["activeTargets"]]

    def stop(self) -> None:
        """Stop the server."""
        stop_process(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def metrics_project(tmp_path_factory):
    """The test project; /fanout broadcasts what it receives."""
    extra = '\n\n@ws.on("/fanout")\ndef fanout(conn, message):\n    ws.broadcast("/fanout", message)\n'
    return make_project(tmp_path_factory.mktemp("metrics-project"), extra_wsgi=extra)


def test_prometheus_scrapes_one_process_with_the_token(metrics_project, tmp_path, clients):
    need_prometheus()
    server = asok_serve(metrics_project, tmp_path, env=project_env(METRICS_TOKEN=TOKEN))
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}")
    try:
        for _ in range(3):
            clients.connect(server, "/chat/room-a")
        clients.connect(server, "/chat/lobby")
        prometheus.wait_for('asok_green_connections{route="/chat/[room]"}', 3)
        prometheus.wait_for('asok_green_connections{route="/chat/lobby"}', 1)
        prometheus.wait_for("asok_websocket_active_connections", 4)
        assert prometheus.scrape_health() == ["up"]
        # Raw paths and room names never become labels.
        assert prometheus.query('{route="/chat/room-a"}') == []
        clients.close_all()
        prometheus.wait_for('asok_green_connections{route="/chat/[room]"}', 0)
        prometheus.wait_for("asok_websocket_active_connections", 0)
        prometheus.wait_for("asok_green_connections_opened_total", 4)
    finally:
        prometheus.stop()
        server.stop()


def test_prometheus_without_the_token_sees_the_target_down(metrics_project, tmp_path):
    need_prometheus()
    server = asok_serve(metrics_project, tmp_path, env=project_env(METRICS_TOKEN=TOKEN))
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.port}", token="wrong")
    try:
        deadline = time.monotonic() + 30
        while prometheus.scrape_health() != ["down"] and time.monotonic() < deadline:
            time.sleep(0.25)
        assert prometheus.scrape_health() == ["down"]
        assert prometheus.query("asok_green_connections") == []
    finally:
        prometheus.stop()
        server.stop()


def test_prometheus_sees_two_workers_as_one_server(metrics_project, redis_server, tmp_path, clients):
    need_prometheus()
    port = free_port()
    argv = [str(BIN / "asok"), "serve", "--gevent", "--port", str(port), "--workers", "2"]
    server = ServerProcess(argv, metrics_project, node_env(redis_server, METRICS_TOKEN=TOKEN), port, tmp_path / "w.log")
    prometheus = None
    try:
        server.wait_for_log("with 2 worker processes", timeout=30)
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
        listeners = [clients.connect(server, "/fanout") for _ in range(3)]
        for _ in range(2):
            clients.connect(server, "/chat/room-b")
        # Whichever worker answers a scrape, it reports both workers' sockets.
        prometheus.wait_for("asok_green_processes", 2)
        prometheus.wait_for('asok_green_connections{route="/fanout"}', 3)
        prometheus.wait_for('asok_green_connections{route="/chat/[room]"}', 2)
        prometheus.wait_for("asok_websocket_active_connections", 5)
        prometheus.wait_for("asok_green_redis_connected", 2)
        listeners[0].send("hello all")
        for listener in listeners:
            listener.settimeout(5)
            assert listener.recv() == "hello all"
        prometheus.wait_for('asok_green_messages_received_total{route="/fanout"}', 1)
        prometheus.wait_for("asok_green_messages_sent_total", 3)
        clients.close_all()
        prometheus.wait_for("asok_websocket_active_connections", 0)
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()

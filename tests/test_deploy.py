"""``asok-green deploy``: the nginx site passes ``nginx -t`` and serves; the unit runs the server.

The files are written by the real console script. The site is wrapped in a
minimal main config and run by a real nginx; the server is started with the
unit's own ``ExecStart``, ``WorkingDirectory`` and ``Environment`` lines, and
the unit is checked by ``systemd-analyze verify`` when the machine has it.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest
import websocket

from asok_green.process.deploy import DeployError, DeployOptions, nginx_site, systemd_unit
from tests.asok_project import make_project, project_env
from tests.conftest import BIN, INTROSPECTION, ServerProcess, free_port
from tests.nginx_support import Nginx, check_config, require_nginx, write_config

pytestmark = pytest.mark.timeout(120)

OPTIONS = DeployOptions(name="shop", project="/srv/shop", asok="/srv/shop/venv/bin/asok", server_name="example.com")


def test_the_site_sends_pages_and_websockets_to_the_one_port():
    site = nginx_site(OPTIONS)
    assert "map $http_upgrade $connection_upgrade_shop {" in site
    assert site.count("location ") == 1 and "location / {" in site
    for line in (
        "proxy_pass http://127.0.0.1:8000;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade_shop;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_read_timeout 3600s;",
        "server_name example.com;",
    ):
        assert line in site


def test_with_a_prefix_websockets_get_their_own_location():
    site = nginx_site(DeployOptions(**{**OPTIONS.__dict__, "prefix": "/ws"}))
    assert "location / {" in site and "location /ws/ {" in site
    pages, sockets = site.split("location /ws/ {")
    assert "proxy_read_timeout 60s;" in pages and "proxy_read_timeout 3600s;" in sockets
    assert 'Environment="WS_PATH=/ws"' in systemd_unit(DeployOptions(**{**OPTIONS.__dict__, "prefix": "/ws"}))


def test_the_unit_runs_asok_serve_gevent_in_the_project():
    unit = systemd_unit(OPTIONS)
    for line in (
        "WorkingDirectory=/srv/shop",
        "ExecStart=/srv/shop/venv/bin/asok serve --gevent --host 127.0.0.1 --port 8000",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=65536",
        'Environment="TRUSTED_PROXIES=127.0.0.1"',
        "WantedBy=multi-user.target",
    ):
        assert line in unit
    assert "WS_PATH" not in unit and "User=" not in unit


def test_a_server_on_every_address_is_proxied_over_loopback():
    options = DeployOptions(**{**OPTIONS.__dict__, "host": "0.0.0.0"})
    assert "proxy_pass http://127.0.0.1:8000;" in nginx_site(options)
    assert 'Environment="TRUSTED_PROXIES=127.0.0.1"' in systemd_unit(options)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "bad name"},
        {"project": "relative/path"},
        {"project": "/srv/a;b"},
        {"prefix": "ws"},
        {"prefix": "/ws;}"},
        {"server_name": "a.com; include /etc/passwd"},
        {"listen": "80; x"},
        {"port": 0},
        {"user": "root\nExecStartPre=/bin/sh"},
        {"environment": ("A=1\nExecStartPre=/bin/sh",)},
        {"environment": ("=1",)},
    ],
)
def test_a_value_that_would_break_the_files_is_refused(change):
    with pytest.raises(DeployError):
        nginx_site(DeployOptions(**{**OPTIONS.__dict__, **change}))


# -- the real thing ------------------------------------------------------------------


def deploy(project: pathlib.Path, out: pathlib.Path, *options: str, command=(str(BIN / "asok-green"), "deploy")):
    """Run the deploy ``command`` in ``project``; return the written (site, unit) paths."""
    done = subprocess.run(
        [*command, "--out", str(out), *options],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    name = project.name
    assert f"wrote {out / (name + '.nginx.conf')}" in done.stdout
    return out / f"{name}.nginx.conf", out / f"{name}.service"


def unit_settings(unit: str) -> tuple[list[str], str, dict[str, str]]:
    """ExecStart's argv, WorkingDirectory and the Environment of a unit's text."""
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            values.setdefault(key, []).append(value)
    env = dict(shlex.split(item)[0].split("=", 1) for item in values.get("Environment", []))
    return shlex.split(values["ExecStart"][0]), values["WorkingDirectory"][0], env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("deploy") / "shop", extra_wsgi=INTROSPECTION)


def test_deploy_files_pass_nginx_t_and_serve_through_nginx(project, tmp_path):
    require_nginx()
    backend_port, nginx_port = free_port(), free_port()
    site, unit = deploy(
        project,
        tmp_path / "deployment",
        "--port",
        str(backend_port),
        "--listen",
        f"127.0.0.1:{nginx_port}",
        "--prefix",
        "/ws",
    )
    checked = check_config(write_config(tmp_path / "check", site.read_text()))
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr

    argv, workdir, env = unit_settings(unit.read_text())
    assert argv[1:3] == ["serve", "--gevent"] and pathlib.Path(workdir) == project
    server = ServerProcess(argv, pathlib.Path(workdir), project_env(**env), backend_port, tmp_path / "server.log")
    proxy = None
    try:
        proxy = Nginx(tmp_path / "nginx", site.read_text(), nginx_port)
        with urllib.request.urlopen(proxy.url + "/", timeout=5) as page:
            body = page.read().decode()
        assert 'window.ASOK_WS_PATH = "/ws";' in body and f"window.ASOK_WS_PORT = {nginx_port};" in body
        sock = socket.create_connection(("127.0.0.1", nginx_port), timeout=5, source_address=("127.0.0.2", 0))
        ws = websocket.create_connection(proxy.ws_url + "/ws/introspect", socket=sock, origin=proxy.url, timeout=5)
        ws.send("{}")
        answer = json.loads(ws.recv())
        ws.close()
        assert answer["addr"] == ["127.0.0.2", 0] and answer["path"] == "/introspect"
    finally:
        if proxy is not None:
            proxy.stop()
        assert server.stop() == 0  # SIGTERM, the unit's KillSignal: a clean exit


def test_python_m_asok_green_deploy_writes_the_same_files(project, tmp_path):
    site, unit = deploy(project, tmp_path / "a")
    same_site, same_unit = deploy(project, tmp_path / "b", command=(sys.executable, "-m", "asok_green", "deploy"))
    assert site.read_text() == same_site.read_text() and unit.read_text() == same_unit.read_text()


def test_the_unit_passes_systemd_analyze_verify(project, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on this machine")
    _, unit = deploy(project, tmp_path)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr  # no warning about the unit itself


def test_deploy_outside_a_project_says_so(tmp_path):
    done = subprocess.run(
        [str(BIN / "asok-green"), "deploy"], cwd=tmp_path, env=project_env(), capture_output=True, text=True
    )
    assert done.returncode == 2 and "no wsgi.py" in done.stderr


def test_a_bad_prefix_is_refused_by_the_command(project, tmp_path):
    done = subprocess.run(
        [str(BIN / "asok-green"), "deploy", "--prefix", "ws x", "--out", str(tmp_path)],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "prefix" in done.stderr
    assert not list(tmp_path.iterdir())


def test_asok_deploy_gevent_writes_the_same_files(project, tmp_path):
    site, unit = deploy(project, tmp_path / "a")
    same_site, same_unit = deploy(project, tmp_path / "b", command=(str(BIN / "asok"), "deploy", "--gevent"))
    assert site.read_text() == same_site.read_text() and unit.read_text() == same_unit.read_text()


def test_prod_dir_is_where_the_unit_runs(project, tmp_path):
    _, unit = deploy(
        project, tmp_path, "--prod-dir", "/var/www/shop", command=(str(BIN / "asok"), "deploy", "--gevent")
    )
    argv, workdir, _ = unit_settings(unit.read_text())
    assert workdir == "/var/www/shop" and argv[0] == "/var/www/shop/venv/bin/asok"
    assert not (project / "deployment").exists()  # nothing of Asok's own deploy

"""A real nginx (Debian's package) for the tests: a site wrapped in a minimal main config.

Everything nginx writes (pid, logs, temp files) stays in the test's folder, given
as nginx's prefix (``-p``); nginx runs in the foreground as one process
(``master_process off``), stopped by the test. Without ``/usr/sbin/nginx`` the
tests skip, or fail when CI=true (scripts/test installs it as root).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from tests.conftest import stop_process, wait_listening

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {site};
}}
"""


def require_nginx() -> str:
    """The nginx executable; skip (fail when CI=true) if it is missing."""
    if not os.access(NGINX, os.X_OK):
        reason = f"{NGINX} is missing: apt-get install nginx"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true needs the nginx tests; scripts/test installs it as root)", False)
        pytest.skip(reason)
    return NGINX


def write_config(folder: pathlib.Path, site: str) -> pathlib.Path:
    """Write ``site`` (an http-context file) and a main config including it; return the main config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    site_path = folder / "site.conf"
    site_path.write_text(site)
    main = folder / "nginx.conf"
    main.write_text(MAIN_CONFIG.format(prefix=folder, site=site_path))
    return main


def check_config(main: pathlib.Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on ``main`` with its folder as the prefix."""
    folder = main.parent
    argv = [require_nginx(), "-t", "-p", str(folder), "-c", str(main), "-e", str(folder / "error.log")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


class Nginx:
    """nginx serving ``site`` on ``port`` until :meth:`stop`."""

    def __init__(self, folder: pathlib.Path, site: str, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.main = write_config(folder, site)
        checked = check_config(self.main)
        assert checked.returncode == 0, checked.stderr
        self.log_path = folder / "nginx.out"
        self._out = open(self.log_path, "wb")
        argv = [NGINX, "-p", str(folder), "-c", str(self.main), "-e", str(folder / "error.log")]
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)
        self._wait_ready(folder)

    def _wait_ready(self, folder: pathlib.Path, timeout: float = 15) -> None:
        wait_listening(self.proc, self.port, "nginx", (folder / "error.log").read_text, timeout)

    def stop(self) -> None:
        """Stop nginx (SIGTERM; killed if it lingers)."""
        stop_process(self.proc)
        self._out.close()

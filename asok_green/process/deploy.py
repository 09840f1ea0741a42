"""Deploy files for one project: an nginx site and a systemd unit for ``asok serve --gevent``.

:func:`nginx_site` and :func:`systemd_unit` return text (pure); :func:`write_files`
writes them. nginx sends pages and WebSockets to the one port, with the upgrade
headers, ``Host $host`` and the forwarding headers that ``TRUSTED_PROXIES``
(set by the unit to the proxy's address) makes the server believe.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DeployOptions", "DeployError", "nginx_site", "systemd_unit", "write_files"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SERVER_NAMES = re.compile(r"^[A-Za-z0-9_.*~-]+( [A-Za-z0-9_.*~-]+)*$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_ADDRESS = re.compile(r"^[0-9A-Za-z.:\[\]-]+$")


class DeployError(ValueError):
    """An option would give a broken or unsafe file (said in the message)."""


@dataclass(frozen=True)
class DeployOptions:
    """What the files describe.

    Attributes:
        name: the site's and unit's name (the project folder's name by default).
        project: the project's folder (holds ``wsgi.py``): the unit's working directory.
        host, port: where ``asok serve --gevent`` listens (nginx proxies to it).
        server_name: nginx's ``server_name`` (``_`` answers any host).
        listen: nginx's ``listen`` (a port, or ``address:port``).
        prefix: the WebSocket path prefix (``WS_PATH``), e.g. ``/ws``; "" for none.
        asok: the ``asok`` executable the unit starts (absolute).
        user: the account the unit runs as ("" for systemd's default).
        read_timeout: seconds nginx waits for a quiet WebSocket before closing it.
        open_files: the unit's ``LimitNOFILE`` (one descriptor per connection).
        environment: more ``KEY=value`` settings for the unit.
    """

    name: str
    project: str
    host: str = "127.0.0.1"
    port: int = 8000
    server_name: str = "_"
    listen: str = "80"
    prefix: str = ""
    asok: str = field(default_factory=lambda: str(Path(sys.executable).parent / "asok"))
    user: str = ""
    read_timeout: int = 3600
    open_files: int = 65536
    environment: tuple[str, ...] = ()

    def checked(self) -> DeployOptions:
        """Return self if every value is safe to write into the files; raise :class:`DeployError`."""
        if not _NAME.match(self.name):
            raise DeployError(f"name {self.name!r}: use letters, digits, '_', '.', '-'")
        if not os.path.isabs(self.project) or not os.path.isabs(self.asok):
            raise DeployError("the project folder and the asok executable must be absolute paths")
        for path in (self.project, self.asok):
            if any(c in path for c in "\n\r\"'\\ %$;"):
                raise DeployError(f"path {path!r} has characters a unit or site file cannot hold")
        if not (0 < self.port < 65536) or not _ADDRESS.match(self.host):
            raise DeployError(f"cannot proxy to {self.host}:{self.port}")
        if not _SERVER_NAMES.match(self.server_name):
            raise DeployError(f"server_name {self.server_name!r} is not a list of host names")
        if not re.match(r"^([0-9A-Za-z.\[\]:-]+:)?[0-9]{1,5}$", self.listen):
            raise DeployError(f"listen {self.listen!r}: give a port or address:port")
        if self.prefix and not _PREFIX.match(self.prefix):
            raise DeployError(f"prefix {self.prefix!r}: a path such as /ws")
        if self.user and not _NAME.match(self.user):
            raise DeployError(f"user {self.user!r} is not an account name")
        for item in self.environment:
            key, eq, value = item.partition("=")
            if not (eq and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key)) or any(c in value for c in '\n\r"\\%$'):
                raise DeployError(f"environment {item!r}: give KEY=value")
        return self

    @property
    def upstream(self) -> str:
        """The server's address as nginx writes it (loopback when the server listens on every address)."""
        host = self.proxy_address
        return f"{'[' + host + ']' if ':' in host else host}:{self.port}"

    @property
    def proxy_address(self) -> str:
        """The address nginx connects to, and so from (the server's, on one machine)."""
        host = self.host.strip("[]")
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _location(path: str, options: DeployOptions, read_timeout: int, comment: str) -> str:
    upgrade = f"$connection_upgrade_{_variable(options.name)}"
    return f"""    # {comment}
    location {path} {{
        proxy_pass http://{options.upstream};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection {upgrade};
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        # The client's own address: asok_green and Asok read the first entry.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Port $server_port;
        proxy_connect_timeout 5s;
        proxy_send_timeout {read_timeout}s;
        proxy_read_timeout {read_timeout}s;
    }}
"""


def _variable(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def nginx_site(options: DeployOptions) -> str:
    """An nginx site (``http`` context, e.g. /etc/nginx/sites-available/NAME) for the project's one port.

    Without a prefix one ``location /`` serves pages and WebSockets; with one,
    ``location PREFIX/`` keeps WebSockets open for ``read_timeout`` and pages
    get nginx's usual 60 s.
    """
    options.checked()
    upgrade = f"$connection_upgrade_{_variable(options.name)}"
    head = f"""# {options.name}: pages and WebSockets from `asok serve --gevent` on {options.upstream}.
# Written by `asok-green deploy`. The server trusts the forwarding headers from
# {options.proxy_address} (TRUSTED_PROXIES in the systemd unit).

map $http_upgrade {upgrade} {{
    default upgrade;
    ''      close;
}}

server {{
    listen {options.listen};
    server_name {options.server_name};
    client_max_body_size 10m;

"""
    if options.prefix:
        body = _location("/", options, 60, "Pages (and any WebSocket outside the prefix).")
        body += "\n" + _location(
            f"{options.prefix}/", options, options.read_timeout, f"WebSockets under WS_PATH={options.prefix}."
        )
    else:
        body = _location("/", options, options.read_timeout, "Pages and WebSockets share the one port.")
    return head + body + "}\n"


def systemd_unit(options: DeployOptions) -> str:
    """A systemd service that runs ``asok serve --gevent`` in the project's folder.

    SIGTERM closes every WebSocket with 1001 and exits 0; ``Restart=on-failure``
    brings a crashed server back; ``systemctl reload`` (SIGHUP) restarts it with
    new code on the same socket, refusing no one and keeping the main PID;
    ``LimitNOFILE`` sets the connection ceiling.
    """
    options.checked()
    environment = [
        "PYTHONUNBUFFERED=1",
        f"TRUSTED_PROXIES={options.proxy_address}",
        *([f"WS_PATH={options.prefix}"] if options.prefix else []),
        *options.environment,
    ]
    user = f"User={options.user}\n" if options.user else ""
    env_lines = "".join(f'Environment="{item}"\n' for item in environment)
    return f"""[Unit]
Description={options.name}: pages and WebSockets (asok serve --gevent)
After=network.target

[Service]
Type=simple
{user}WorkingDirectory={options.project}
{env_lines}ExecStart={options.asok} serve --gevent --host {options.host} --port {options.port}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
LimitNOFILE={options.open_files}

[Install]
WantedBy=multi-user.target
"""


def write_files(options: DeployOptions, folder: str) -> list[str]:
    """Write ``NAME.nginx.conf`` and ``NAME.service`` into ``folder`` (made if missing); return their paths."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for filename, text in (
        (f"{options.name}.nginx.conf", nginx_site(options)),
        (f"{options.name}.service", systemd_unit(options)),
    ):
        path = os.path.join(folder, filename)
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
        written.append(path)
    return written

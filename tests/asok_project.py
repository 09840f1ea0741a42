"""Build a real Asok project for the tests, and log in to it over HTTP.

`make_project(root)` writes an Asok 0.8 project (the layout `asok create`
makes) and fills its SQLite database:

    root/
      .env                          DEBUG=true|false, SECRET_KEY (fixed)
      wsgi.py                       app, ws and the WebSocket routes (below)
      db.sqlite3                    table `users`: alice (admin), bob
      src/models/user.py            User(name, email, password, is_admin)
      src/migrations/0001_users.py  creates `users`
      src/seeds.py                  inserts USERS (run by `asok seed`)
      src/partials/                 html/base.html, css/base.css, images/
      src/pages/page.py, page.html  /         chat box on /chat/general
      src/pages/login/page.py       /login    GET form, POST form or JSON
      src/pages/logout/page.py      /logout   GET or POST
      src/pages/whoami/page.py      /whoami   text/plain: name or "guest"
      src/pages/notify/page.py      /notify?msg=x  ws.broadcast("/notifications", x)

The model, migration, seeds, partials and the login, logout and whoami pages
are copied from the demo app (../demo), so both share one implementation.
The database is made the way an Asok user makes it: `demo/seed_db.py` runs
`python -m asok migrate` then `python -m asok seed` in a subprocess whose
working directory is `root` (asok opens `db.sqlite3` relative to the current
directory, so a server must also run from `root`). The pytest process never
imports asok.

WebSocket routes of wsgi.py:
    /chat/[room]     on message: broadcast f"{name}: {message}" to the room
                     (name = conn.user.name, or "Guest");
                     on disconnect: broadcast "Someone left the chat"
    /chat/lobby      static route, wins over /chat/[room]:
                     replies "lobby: " + message to the sender only
    /notifications   on connect: sends "Connected to notification stream"
    /echo            sends each message (text or bytes) back
    /boom            the message handler raises RuntimeError("boom")
    /asok/live       Asok's built-in operators (presence, rooms, typing)

Pages reach the WebSocketServer as `request.app.ws` (wsgi.py sets
`app.ws = ws`), never by importing wsgi: servers load wsgi.py under names of
their own (`asok dev` does not even register it in sys.modules), and a second
import would build a second app and a second server. The fixture also turns
off Asok's global limit of 100 requests a minute per IP
(`app.config["RATE_LIMIT"] = False`): tests on loopback exceed it.

Logging in (what `login()` does; plain urllib, no cookie jar needed):
  1. GET /login. The answer sets the cookie `asok_csrf=<token>` (and
     `asok_sid`); the same token is in the `X-CSRF-Token` response header.
  2. POST /login with the headers `Content-Type: application/json`,
     `X-CSRF-Token: <token>` and `Cookie: asok_csrf=<token>`, and the body
     {"email": "alice@example.com", "password": "alice-pass-1"}.
     200 {"user": "alice"} sets `asok_session=<id>:<sid>.<hmac>` (what
     WebSocket handshakes authenticate with), a new `asok_sid` and a new
     `asok_csrf`. Bad credentials give 401 {"error": ...}; a missing or
     wrong token gives 403. A form post (application/x-www-form-urlencoded,
     token in `csrf_token`) gets a 302 to `next` instead.
  3. Send `Cookie: asok_session=...` (`cookie_header(cookies)`) on later
     requests and handshakes. GET /logout clears `asok_session`.
With DEBUG=false Asok marks `asok_session` Secure, so a browser (or a cookie
jar) will not send it over plain http; send the header yourself.
"""

from __future__ import annotations

import email.message
import json
import os
import pathlib
import runpy
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

DEMO = pathlib.Path(__file__).resolve().parent.parent / "demo"

USERS: dict[str, tuple[str, str]] = runpy.run_path(str(DEMO / "src" / "seeds.py"))["USERS"]
"""Seeded accounts: name -> (email, password). alice is the admin."""

SECRET_KEY = "5be1f1f3b8a04e6c9d27a0c3e1f48b6d2a9c7e05f3b1d84a6c2e09f7b3d5a1c8"
"""The SECRET_KEY written to every generated project's .env."""

SHARED = (
    "src/models",
    "src/migrations",
    "src/seeds.py",
    "src/partials",
    "src/pages/login",
    "src/pages/logout",
    "src/pages/whoami",
)
"""Paths copied from the demo app into every generated project."""

ENV_OVERRIDES = ("DEBUG", "SECRET_KEY", "DATABASE_URL", "ASOK_ENV", "ASOK_CLI")
"""Variables that, when set, win over the project's .env (Asok never
overrides an existing variable), so `project_env` removes them."""

WSGI = '''\
"""Test project: Asok pages plus the WebSocket handlers of the Asok docs."""

from asok import Asok, WebSocketServer

app = Asok()
app.config["RATE_LIMIT"] = False
ws = WebSocketServer(port=8001, app=app)
app.ws = ws


@ws.on("/chat/[room]")
def on_message(conn, message):
    room = conn.params["room"]
    name = conn.user.name if conn.user else "Guest"
    ws.broadcast(f"/chat/{room}", f"{name}: {message}")


@ws.on_connect("/notifications")
def on_connect(conn):
    print(f"Client connected from {conn.addr}")
    conn.send("Connected to notification stream")


@ws.on_disconnect("/chat/[room]")
def on_disconnect(conn):
    ws.broadcast(conn.path, "Someone left the chat")


@ws.on("/chat/lobby")
def on_lobby(conn, message):
    conn.send("lobby: " + message)


@ws.on("/echo")
def on_echo(conn, message):
    conn.send(message)


@ws.on("/boom")
def on_boom(conn, message):
    raise RuntimeError("boom")
'''

INDEX_PY = '''\
"""/: a chat box on /chat/general."""


def render(request):
    return request.html("page.html")
'''

# The `ws-` in data-ws-path is what makes Asok inject its alive script, and
# with it window.asokWS (asok/core/_asset_injector.py, _needs_alive).
INDEX_HTML = """\
{% extends "html/base.html" %}
{% block title %}Test chat{% endblock %}

{% block main %}
<section id="chat" class="card" data-ws-path="/chat/general" data-state="connecting">
    <ol id="messages"></ol>
    <form id="composer"><input id="message" autocomplete="off"><button>Send</button></form>
</section>
<script type="module">
const box = document.getElementById("chat");
const socket = window.asokWS(box.dataset.wsPath);
window.chatSocket = socket;
socket.onopen = () => { box.dataset.state = "open"; };
socket.onclose = () => { box.dataset.state = "closed"; };
socket.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = event.data;
    document.getElementById("messages").append(item);
};
document.getElementById("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("message");
    socket.send(input.value);
    input.value = "";
});
</script>
{% endblock %}
"""

NOTIFY_PY = '''\
"""/notify?msg=...: broadcast `msg` to every /notifications socket."""


def render(request):
    request.app.ws.broadcast("/notifications", request.args.get("msg", ""))
    return request.text("sent")
'''


def make_project(root: pathlib.Path, *, extra_wsgi: str = "", debug: bool = True) -> pathlib.Path:
    """Create a real Asok project in `root` (made if missing) and return it.

    `extra_wsgi` is Python appended to wsgi.py just before `ws.start()`;
    `debug` sets DEBUG in .env. The database is migrated and seeded with
    USERS before this returns.
    """
    root = pathlib.Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _copy_shared(root)
    _write(root / ".env", f"DEBUG={str(debug).lower()}\nSECRET_KEY={SECRET_KEY}\n")
    _write(root / "wsgi.py", _wsgi_source(extra_wsgi))
    _write(root / "src/pages/page.py", INDEX_PY)
    _write(root / "src/pages/page.html", INDEX_HTML)
    _write(root / "src/pages/notify/page.py", NOTIFY_PY)
    _seed(root)
    return root


def asok_create(parent: pathlib.Path, name: str, *, wsgi_tail: str = "") -> pathlib.Path:
    """Run `asok create name` in `parent`, append `wsgi_tail` to its wsgi.py; return the project."""
    created = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "asok"), "create", name],
        cwd=parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    project = pathlib.Path(parent) / name
    with open(project / "wsgi.py", "a") as wsgi:
        wsgi.write(wsgi_tail)
    return project


def _wsgi_source(extra: str) -> str:
    parts = [WSGI, extra.strip(), "ws.start()"]
    return "\n\n".join(part for part in parts if part) + "\n"


def project_env(**extra: str) -> dict[str, str]:
    """The environment for a process serving a generated project.

    It is this process' environment without the variables that would hide
    the project's .env, plus `extra`.
    """
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    env.update(extra)
    return env


def run_python(args: list[str], cwd: pathlib.Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with the project's environment, no stdin, its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=project_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _copy_shared(root: pathlib.Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "chat.js")
    for rel in SHARED:
        source, target = DEMO / rel, root / rel
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _seed(root: pathlib.Path) -> None:
    done = run_python([str(DEMO / "seed_db.py"), str(root)], root)
    names = _user_names(root / "db.sqlite3")
    if done.returncode != 0 or names != set(USERS):
        raise RuntimeError(
            f"seeding {root} failed (exit {done.returncode}, users {sorted(names)}):\n{done.stdout}\n{done.stderr}"
        )


def _user_names(db: pathlib.Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        try:
            return {row[0] for row in conn.execute("SELECT name FROM users")}
        except sqlite3.OperationalError:
            return set()


@dataclass
class Response:
    """An HTTP answer as `fetch` returns it; redirects are not followed."""

    status: int
    headers: email.message.Message
    body: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", "replace")

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies this answer sets, name -> value ("" when it clears one)."""
        found = {}
        for line in self.headers.get_all("Set-Cookie") or ():
            name, _, value = line.split(";", 1)[0].partition("=")
            found[name.strip()] = value.strip()
        return found


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(
    url: str,
    *,
    method: str = "GET",
    cookies: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 10,
) -> Response:
    """Make one HTTP request with urllib; any status comes back as a Response."""
    headers = dict(headers or {})
    if cookies:
        headers["Cookie"] = cookie_header(cookies)
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers, error.read())


def cookie_header(cookies: dict[str, str]) -> str:
    """Format cookies for a `Cookie:` request header."""
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def merge_cookies(jar: dict[str, str], response: Response) -> dict[str, str]:
    """Return `jar` updated with what `response` sets; cleared cookies are dropped."""
    merged = dict(jar)
    for name, value in response.cookies.items():
        if value:
            merged[name] = value
        else:
            merged.pop(name, None)
    return merged


def login(base_url: str, name: str) -> dict[str, str]:
    """Log in as `name` (a USERS key) and return the cookies to send afterwards.

    The result holds `asok_session` (enough on its own for a WebSocket
    handshake), `asok_sid` and `asok_csrf`. Raises AssertionError if the
    server refuses.
    """
    email_address, password = USERS[name]
    first = fetch(f"{base_url}/login")
    jar = merge_cookies({}, first)
    answer = fetch(
        f"{base_url}/login",
        method="POST",
        cookies=jar,
        headers={
            "Content-Type": "application/json",
            "X-CSRF-Token": jar["asok_csrf"],
        },
        data=json.dumps({"email": email_address, "password": password}).encode(),
    )
    if answer.status != 200 or "asok_session" not in answer.cookies:
        raise AssertionError(f"login as {name} failed: {answer.status} {answer.text}")
    return merge_cookies(jar, answer)

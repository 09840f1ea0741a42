"""The generated Asok project works as a plain WSGI app, without asok_green.

Each project is served by `wsgiref` in a subprocess (asok keeps global
state; the pytest process never imports it) with ASOK_CLI=true, so that
asok's own threaded `ws.start()` does not bind port 8001.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import subprocess
import sys

import pytest

from tests.asok_project import (
    SECRET_KEY,
    USERS,
    fetch,
    login,
    make_project,
    merge_cookies,
    project_env,
)

pytestmark = pytest.mark.timeout(60)

SERVE = """\
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

sys.path.insert(0, ".")
import wsgi


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = make_server("127.0.0.1", 0, wsgi.app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> pathlib.Path:
    """A debug project whose wsgi.py also gets a line of `extra_wsgi`."""
    return make_project(tmp_path_factory.mktemp("asok") / "site", extra_wsgi='EXTRA = "extra"')


def serve(project: pathlib.Path):
    """Start a wsgiref server for `project`; return (base_url, process)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=project,
        env=project_env(ASOK_CLI="true"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = process.stdout.readline().strip()
    if not port.isdigit():
        process.kill()
        raise RuntimeError(f"server for {project} did not start: {port!r}")
    return f"http://127.0.0.1:{port}", process


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `serve`."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def base_url(project):
    """The URL of the module's project, served by wsgiref."""
    url, process = serve(project)
    yield url
    stop(process)


def test_project_has_the_asok_layout(project):
    for rel in (
        ".env",
        "wsgi.py",
        "db.sqlite3",
        "src/models/user.py",
        "src/migrations/0001_users.py",
        "src/pages/page.py",
        "src/pages/login/page.py",
        "src/pages/notify/page.py",
        "src/partials/html/base.html",
    ):
        assert (project / rel).exists(), rel
    env = (project / ".env").read_text()
    assert "DEBUG=true" in env
    assert f"SECRET_KEY={SECRET_KEY}" in env


def test_users_are_seeded_with_hashed_passwords(project):
    with sqlite3.connect(project / "db.sqlite3") as conn:
        rows = conn.execute("SELECT name, email, password, is_admin FROM users")
        users = {name: (email, pw, admin) for name, email, pw, admin in rows}
    assert set(users) == set(USERS) == {"alice", "bob"}
    for name, (email, password) in USERS.items():
        assert users[name][0] == email
        assert users[name][1].startswith("pbkdf2:sha256:")
        assert password not in users[name][1]
    assert users["alice"][2] == 1
    assert users["bob"][2] == 0


def test_make_project_is_repeatable(project):
    assert make_project(project, extra_wsgi='EXTRA = "extra"') == project


def test_wsgi_imports_under_plain_asok(project):
    check = (
        "import wsgi\n"
        "assert wsgi.app.ws is wsgi.ws and wsgi.ws.app is wsgi.app\n"
        "print(wsgi.EXTRA, type(wsgi.ws).__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=project,
        env=project_env(ASOK_CLI="true"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["extra", "asok.ws.server"]


def test_home_page_offers_asok_ws(base_url):
    page = fetch(f"{base_url}/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "window.asokWS" in page.text
    assert 'data-ws-path="/chat/general"' in page.text


def test_login_whoami_logout(base_url):
    assert fetch(f"{base_url}/whoami").text == "guest"
    cookies = login(base_url, "alice")
    assert cookies["asok_session"].startswith("1:")
    whoami = fetch(f"{base_url}/whoami", cookies=cookies)
    assert whoami.headers["Content-Type"].startswith("text/plain")
    assert whoami.text == "alice"

    out = fetch(f"{base_url}/logout", cookies=cookies)
    assert out.status == 302
    cookies = merge_cookies(cookies, out)
    assert "asok_session" not in cookies
    assert fetch(f"{base_url}/whoami", cookies=cookies).text == "guest"


def test_login_with_a_form_redirects_to_next(base_url):
    jar = merge_cookies({}, fetch(f"{base_url}/login"))
    email, password = USERS["bob"]
    form = f"csrf_token={jar['asok_csrf']}&email={email}&password={password}&next=/x"
    answer = fetch(
        f"{base_url}/login",
        method="POST",
        cookies=jar,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        data=form.encode(),
    )
    assert answer.status == 302
    assert answer.headers["Location"] == "/x"
    jar = merge_cookies(jar, answer)
    assert fetch(f"{base_url}/whoami", cookies=jar).text == "bob"


def test_login_refuses_a_wrong_password(base_url):
    jar = merge_cookies({}, fetch(f"{base_url}/login"))
    answer = fetch(
        f"{base_url}/login",
        method="POST",
        cookies=jar,
        headers={"Content-Type": "application/json", "X-CSRF-Token": jar["asok_csrf"]},
        data=json.dumps({"email": USERS["bob"][0], "password": "wrong"}).encode(),
    )
    assert answer.status == 401
    assert "asok_session" not in answer.cookies


def test_login_needs_the_csrf_token(base_url):
    email, password = USERS["alice"]
    answer = fetch(
        f"{base_url}/login",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"email": email, "password": password}).encode(),
    )
    assert answer.status == 403


def test_notify_answers_sent(base_url):
    answer = fetch(f"{base_url}/notify?msg=hello")
    assert answer.status == 200
    assert answer.text == "sent"


def test_production_project_logs_in_with_a_secure_cookie(tmp_path):
    project = make_project(tmp_path / "prod", debug=False)
    assert "DEBUG=false" in (project / ".env").read_text()
    url, process = serve(project)
    try:
        first = fetch(f"{url}/login")
        assert "window.asokWS" not in first.text
        cookies = login(url, "bob")
        assert fetch(f"{url}/whoami", cookies=cookies).text == "bob"
        assert "window.asokWS" in fetch(f"{url}/").text
    finally:
        stop(process)

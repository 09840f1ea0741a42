"""Session cookie -> user, against a real Asok app.

How the app is built: the ``project`` fixture writes a minimal Asok project
into ``tmp_path``, laid out as ``asok create`` does (``wsgi.py`` with
``app = Asok()``, ``.env`` with DEBUG and a 64-char SECRET_KEY,
``src/models/user.py`` with a ``User`` model, ``src/pages/``), plus two
pages: ``/login?id=N`` calls the real ``request.login(user)`` and
``/logout`` the real ``request.logout()``. It chdirs there, imports
``wsgi.py`` by path (Asok finds its root from the cwd and loads
``src/models``), and creates the SQLite ``users`` table with
``User.create_table()``; the database is ``db.sqlite3`` in the project.

Cookies come from driving the app as a WSGI app: a GET to ``/login`` returns
the ``asok_session`` and ``asok_sid`` Set-Cookie headers a browser would
send back in the WebSocket handshake.

Isolation: ``monkeypatch`` restores the cwd, DEBUG, SECRET_KEY and
``sys.path`` (Asok prepends ``src/``); the fixture closes the ORM's
thread-local SQLite connections (they remember the cwd they were opened
in), stops the session store's cleanup timer, and restores Asok's global
``MODELS_REGISTRY``.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import itertools
import logging
import secrets
import socket
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from asok.orm import MODELS_REGISTRY, close_all_db_connections
from asok.session import Session

from asok_green.bridge.auth import (
    SessionAuth,
    SessionState,
    StoreUnavailable,
    load_session,
    parse_cookie_header,
    user_id_of,
)

pytestmark = pytest.mark.quick

SECRET = secrets.token_hex(32)
_module_names = itertools.count()

USER_MODEL = """\
from asok import Field, Model


class User(Model):
    email = Field.String()
"""

LOGIN_PAGE = """\
from asok.orm import MODELS_REGISTRY


def render(request):
    user = MODELS_REGISTRY["User"].find(id=int(request.args.get("id")))
    request.login(user)
    return "logged in"
"""

LOGOUT_PAGE = """\
def render(request):
    request.logout()
    return "logged out"
"""


def write_project(root: Path, debug: bool) -> None:
    """Write a minimal Asok project, laid out as ``asok create`` does."""
    files = {
        "wsgi.py": "from asok import Asok\n\napp = Asok()\n",
        ".env": f"DEBUG={str(debug).lower()}\nSECRET_KEY={SECRET}\n",
        "src/models/__init__.py": "",
        "src/models/user.py": USER_MODEL,
        "src/pages/page.html": "<h1>home</h1>\n",
        "src/pages/login/page.py": LOGIN_PAGE,
        "src/pages/logout/page.py": LOGOUT_PAGE,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load_wsgi_app(root: Path) -> Any:
    """Import the project's ``wsgi.py`` by path and return its ``app``."""
    name = f"asok_green_test_wsgi_{next(_module_names)}"
    spec = importlib.util.spec_from_file_location(name, root / "wsgi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def set_cookies(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Return name -> value of a response's Set-Cookie headers."""
    cookies = {}
    for key, value in headers:
        if key.lower() == "set-cookie":
            name, _, rest = value.partition("=")
            cookies[name] = rest.split(";", 1)[0]
    return cookies


def cookie_header(cookies: dict[str, str]) -> str:
    """Build the Cookie header a browser would send back."""
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def unsigned_value(signed: str) -> str:
    """Strip the ``.signature`` part of an Asok-signed cookie value."""
    return signed.rsplit(".", 1)[0]


@dataclass
class Project:
    """A real Asok app in tmp_path, with helpers to log users in and out."""

    app: Any

    @property
    def User(self) -> Any:  # noqa: N802 - reads like the model it returns
        """The project's ``User`` model class."""
        return MODELS_REGISTRY["User"]

    @property
    def store(self) -> Any:
        """The app's server-side session store."""
        return self.app._session_store

    def get(self, path: str, query: str = "", cookie: str | None = None):
        """Make a real GET request through the WSGI app; return (status, cookies)."""
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "localhost:8000",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
        }
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        response: dict[str, Any] = {}

        def start_response(status, headers, exc_info=None):
            response.update(status=status, headers=headers)

        b"".join(self.app(environ, start_response))
        return response["status"], set_cookies(response["headers"])

    def login(self, user: Any) -> dict[str, str]:
        """Log ``user`` in through ``request.login``; return the cookies set."""
        status, cookies = self.get("/login", f"id={user.id}")
        assert status.startswith("200"), status
        return cookies

    def logout(self, cookies: dict[str, str]) -> dict[str, str]:
        """Log out through ``request.logout``; return the cookies set."""
        status, new_cookies = self.get("/logout", cookie=cookie_header(cookies))
        assert status.startswith("200"), status
        return new_cookies

    def create_user(self, email: str) -> Any:
        """Insert a real row in the users table."""
        return self.User.create(email=email)


@pytest.fixture
def make_project(tmp_path, monkeypatch):
    """Return a factory building a real Asok project (DEBUG on or off)."""
    saved_models = dict(MODELS_REGISTRY)
    apps = []

    def build(debug: bool = False) -> Project:
        root = tmp_path / ("debug" if debug else "production")
        write_project(root, debug)
        monkeypatch.chdir(root)
        monkeypatch.setenv("SECRET_KEY", SECRET)
        monkeypatch.setenv("DEBUG", str(debug).lower())
        monkeypatch.setattr(sys, "path", list(sys.path))
        close_all_db_connections()  # the next connection opens ./db.sqlite3
        app = load_wsgi_app(root)
        apps.append(app)
        MODELS_REGISTRY["User"].create_table()
        return Project(app)

    yield build
    for app in apps:
        app._session_store.stop_cleanup_timer()
    close_all_db_connections()
    MODELS_REGISTRY.clear()
    MODELS_REGISTRY.update(saved_models)


@pytest.fixture
def project(make_project) -> Project:
    """A real production-mode (DEBUG off) Asok project."""
    return make_project(debug=False)


@pytest.fixture
def auth(project) -> SessionAuth:
    """SessionAuth over the project's app."""
    return SessionAuth(project.app)


@pytest.fixture
def alice(project):
    """A real user row."""
    return project.create_user("alice@example.com")


@pytest.fixture
def alice_cookies(project, alice) -> dict[str, str]:
    """The cookies of a real login of alice."""
    return project.login(alice)


def sign_with(key: str, value: str) -> str:
    """Sign like asok.core.security, with any key."""
    digest = hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"{value}.{digest}"


def user_with_id(project: Project, wanted: int) -> Any:
    """Insert rows until one has id ``wanted`` (the ORM picks ids itself)."""
    user = project.create_user("first@example.com")
    while user.id < wanted:
        user = project.create_user(f"user{user.id + 1}@example.com")
    assert user.id == wanted
    return user


# --- a real login ---


def test_valid_login_cookies_give_the_user_and_session(project, auth, alice, alice_cookies):
    user, session = auth.authenticate(cookie_header(alice_cookies))
    assert isinstance(user, project.User)
    assert user.id == alice.id
    assert user.email == "alice@example.com"
    assert isinstance(session, Session)
    assert session.sid == unsigned_value(alice_cookies["asok_sid"])
    assert session["user_id"] == alice.id
    assert session.modified is False


def test_login_cookie_alone_gives_its_bound_session(auth, alice, alice_cookies):
    header = f"asok_session={alice_cookies['asok_session']}"
    user, session = auth.authenticate(header)
    assert user.id == alice.id
    login_sid = unsigned_value(alice_cookies["asok_session"]).split(":", 1)[1]
    assert session.sid == login_sid


def test_session_is_a_copy_of_the_stored_data(project, auth, alice_cookies):
    _, session = auth.authenticate(cookie_header(alice_cookies))
    session["scribble"] = 1
    assert "scribble" not in project.store.load(session.sid)


def test_user_id_of_a_resolved_user(auth, alice, alice_cookies):
    user, _ = auth.authenticate(cookie_header(alice_cookies))
    assert user_id_of(user) == alice.id
    assert user_id_of(None) is None
    assert user_id_of(object()) is None


# --- forged or stale cookies are guests ---


def test_forged_signature_is_a_guest(auth, alice_cookies):
    value = unsigned_value(alice_cookies["asok_session"])
    forged = sign_with(secrets.token_hex(32), value)
    assert auth.authenticate(f"asok_session={forged}") == (None, None)


def test_forged_login_with_a_real_session_cookie_is_a_guest_with_session(auth, alice_cookies):
    value = unsigned_value(alice_cookies["asok_session"])
    forged = sign_with(secrets.token_hex(32), value)
    header = f"asok_session={forged}; asok_sid={alice_cookies['asok_sid']}"
    user, session = auth.authenticate(header)
    assert user is None
    assert session.sid == unsigned_value(alice_cookies["asok_sid"])


def test_user_id_changed_under_the_old_signature_is_a_guest(project, auth, alice_cookies):
    bob = project.create_user("bob@example.com")
    value, signature = alice_cookies["asok_session"].rsplit(".", 1)
    sid = value.split(":", 1)[1]
    assert auth.authenticate(f"asok_session={bob.id}:{sid}.{signature}")[0] is None


def test_valid_signature_without_a_server_session_is_a_guest(project, auth, alice):
    cookie = project.app._sign(f"{alice.id}:{secrets.token_hex(32)}")
    assert auth.authenticate(f"asok_session={cookie}") == (None, None)


def test_deleted_server_session_is_a_guest(project, auth, alice_cookies):
    project.store.delete(unsigned_value(alice_cookies["asok_sid"]))
    assert auth.authenticate(cookie_header(alice_cookies)) == (None, None)


def test_session_of_another_user_is_a_guest(project, auth, alice):
    bob = project.create_user("bob@example.com")
    bob_sid = unsigned_value(project.login(bob)["asok_sid"])
    cookie = project.app._sign(f"{alice.id}:{bob_sid}")
    assert auth.authenticate(f"asok_session={cookie}")[0] is None


def test_after_real_logout_the_old_cookies_are_a_guest(project, auth, alice_cookies):
    project.logout(alice_cookies)
    assert auth.authenticate(cookie_header(alice_cookies)) == (None, None)


@pytest.mark.parametrize("flag", ["_logged_out", "_revoked"])
def test_session_marked_ended_is_a_guest(project, auth, alice_cookies, flag):
    sid = unsigned_value(alice_cookies["asok_sid"])
    project.store.save(sid, {**project.store.load(sid), flag: True})
    user, _ = auth.authenticate(cookie_header(alice_cookies))
    assert user is None


def test_guest_with_a_session_cookie_gets_that_session(project, auth, alice_cookies):
    guest_cookies = project.logout(alice_cookies)
    user, session = auth.authenticate(cookie_header(guest_cookies))
    assert user is None
    assert session.sid == unsigned_value(guest_cookies["asok_sid"])
    assert "user_id" not in session


def test_deleted_user_row_is_a_guest_with_session(project, auth, alice, alice_cookies):
    alice.delete()
    user, session = auth.authenticate(cookie_header(alice_cookies))
    assert user is None
    assert session["user_id"] == alice.id


def test_unknown_auth_model_is_a_guest_with_session(project, alice_cookies):
    auth = SessionAuth(project.app, auth_model="Member")
    user, session = auth.authenticate(cookie_header(alice_cookies))
    assert user is None
    assert session is not None


# --- the old bare "user_id" cookie ---


def test_bare_signed_id_is_the_user_in_debug(make_project):
    project = make_project(debug=True)
    user_42 = user_with_id(project, 42)
    cookie = project.app._sign("42")
    user, session = SessionAuth(project.app).authenticate(f"asok_session={cookie}")
    assert user.id == user_42.id == 42
    assert session is None


def test_bare_signed_id_is_a_guest_in_production(make_project):
    project = make_project(debug=False)
    user_with_id(project, 42)
    cookie = project.app._sign("42")
    assert SessionAuth(project.app).authenticate(f"asok_session={cookie}") == (
        None,
        None,
    )


def test_bare_signed_non_number_is_a_guest_in_debug(make_project):
    project = make_project(debug=True)
    cookie = project.app._sign("admin")
    assert SessionAuth(project.app).authenticate(f"asok_session={cookie}")[0] is None


# --- garbage never raises ---


GARBAGE = [
    None,
    "",
    ";;;",
    "=",
    "asok_session",
    "asok_session=",
    "asok_session=.",
    "asok_session=1:.",
    "asok_session=abc.zz",
    "asok_session=1:2:3.deadbeef",
    "asok_session=" + "é" * 100 + "." + "0" * 64,
    "asok_session=\ud800.\ud800",
    'asok_session="unterminated',
    "asok_session=%ZZ%; asok_sid=%%%",
    "asok_sid=../../etc/passwd.00",
    "asok_session=" + "1:" + "a" * 8000 + "." + "0" * 64,
    "asok_session=x" * 2000,
    "\x00\r\n; asok_sid=\x00",
]


@pytest.mark.parametrize("header", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_cookie_headers_never_raise(auth, alice_cookies, header):
    assert auth.authenticate(header) == (None, None)


def test_signed_but_unloadable_session_id_is_ignored(project, auth, alice_cookies):
    # A sid the file backend would refuse ("Invalid session ID") is no session.
    header = f"asok_sid={project.app._sign('../../etc/passwd')}"
    assert auth.authenticate(header) == (None, None)


def test_app_without_session_store_gives_guests(project, alice_cookies):
    bare_app = SimpleNamespace(config=project.app.config, _unsign=project.app._unsign)
    auth = SessionAuth(bare_app)
    assert auth.authenticate(cookie_header(alice_cookies)) == (None, None)


def test_no_app_gives_guests(alice_cookies):
    assert SessionAuth(None).authenticate(cookie_header(alice_cookies)) == (
        None,
        None,
    )


# --- the secret_key path, for an app without _unsign ---


def test_own_verification_with_the_secret_key(project, alice, alice_cookies):
    app = SimpleNamespace(config={}, _session_store=project.store)
    user, session = SessionAuth(app, secret_key=SECRET).authenticate(cookie_header(alice_cookies))
    assert user.id == alice.id
    assert session.sid == unsigned_value(alice_cookies["asok_sid"])


def test_own_verification_with_a_wrong_key_is_a_guest(project, alice_cookies):
    app = SimpleNamespace(config={}, _session_store=project.store)
    auth = SessionAuth(app, secret_key=secrets.token_hex(32))
    assert auth.authenticate(cookie_header(alice_cookies)) == (None, None)


def test_own_verification_defaults_to_the_config_secret(project, alice, alice_cookies):
    app = SimpleNamespace(config={"SECRET_KEY": SECRET}, _session_store=project.store)
    assert SessionAuth(app).authenticate(cookie_header(alice_cookies))[0].id == alice.id


# --- re-checking a session later ---


def test_session_is_live_then_not_after_logout(project, auth, alice, alice_cookies):
    sid = unsigned_value(alice_cookies["asok_sid"])
    assert auth.session_is_live(sid, alice.id)
    project.logout(alice_cookies)
    assert not auth.session_is_live(sid, alice.id)


def test_session_is_live_checks_the_user(project, auth, alice, alice_cookies):
    sid = unsigned_value(alice_cookies["asok_sid"])
    bob = project.create_user("bob@example.com")
    assert not auth.session_is_live(sid, bob.id)
    assert not auth.session_is_live(sid, None)


@pytest.mark.parametrize("flag", ["_logged_out", "_revoked"])
def test_session_is_live_false_once_marked_ended(project, auth, alice, alice_cookies, flag):
    sid = unsigned_value(alice_cookies["asok_sid"])
    project.store.save(sid, {**project.store.load(sid), flag: True})
    assert not auth.session_is_live(sid, alice.id)


def test_session_is_live_false_for_unknown_or_bad_ids(auth, alice):
    assert not auth.session_is_live(secrets.token_hex(32), alice.id)
    assert not auth.session_is_live("", alice.id)
    assert not auth.session_is_live(None, alice.id)


# --- a store that fails is not a store that says no ---


class FailingStore:
    """A session store whose every read fails, as Redis does while it is down."""

    backend = "custom"

    def load(self, sid):
        raise ConnectionError("store down")


def app_with_store(project: Project, store: Any) -> Any:
    return SimpleNamespace(config=project.app.config, _unsign=project.app._unsign, _session_store=store)


def test_session_state_is_live_then_ended_after_logout(project, auth, alice, alice_cookies):
    sid = unsigned_value(alice_cookies["asok_sid"])
    assert auth.session_state(sid, alice.id) is SessionState.LIVE
    project.logout(alice_cookies)
    assert auth.session_state(sid, alice.id) is SessionState.ENDED


def test_session_state_is_unknown_while_the_store_fails(project, alice, alice_cookies):
    auth = SessionAuth(app_with_store(project, FailingStore()))
    sid = unsigned_value(alice_cookies["asok_sid"])
    assert auth.session_state(sid, alice.id) is SessionState.UNKNOWN
    assert not auth.session_is_live(sid, alice.id)


def test_a_failing_store_at_the_handshake_raises_instead_of_making_a_guest(project, alice_cookies):
    auth = SessionAuth(app_with_store(project, FailingStore()))
    with pytest.raises(StoreUnavailable, match="store down"):
        auth.resolve(cookie_header(alice_cookies))
    assert auth.authenticate(cookie_header(alice_cookies)) == (None, None)


def test_a_forged_cookie_is_a_guest_even_while_the_store_fails(project, alice_cookies):
    auth = SessionAuth(app_with_store(project, FailingStore()))
    forged = sign_with(secrets.token_hex(32), unsigned_value(alice_cookies["asok_session"]))
    assert auth.resolve(f"asok_session={forged}") == auth.resolve(None)


def test_a_guest_whose_session_cannot_be_loaded_is_served_without_it(project, alice_cookies):
    guest_cookies = project.logout(alice_cookies)
    auth = SessionAuth(app_with_store(project, FailingStore()))
    assert auth.resolve(cookie_header(guest_cookies)) == auth.resolve(None)
    assert auth.outage.failing


def test_a_failing_user_model_raises_instead_of_making_a_guest(project, alice_cookies):
    class Unreachable:
        @staticmethod
        def find(**where):
            raise sqlite3.OperationalError("database is locked")

    MODELS_REGISTRY["Unreachable"] = Unreachable
    auth = SessionAuth(project.app, auth_model="Unreachable")
    with pytest.raises(StoreUnavailable, match="database is locked"):
        auth.resolve(cookie_header(alice_cookies))


def test_a_lookup_slower_than_the_timeout_raises(project, alice_cookies):
    def slow(fn, *args, **kwargs):
        gevent.sleep(5)
        return fn(*args, **kwargs)

    auth = SessionAuth(project.app, offload=slow)
    with pytest.raises(StoreUnavailable, match="no answer within"):
        auth.resolve(cookie_header(alice_cookies), timeout=0.05)


def test_an_outage_is_logged_once_and_its_end_once(project, alice, alice_cookies, caplog):
    store = FailingStore()
    auth = SessionAuth(app_with_store(project, store))
    sid = unsigned_value(alice_cookies["asok_sid"])
    caplog.set_level(logging.INFO, logger="asok_green.auth")
    for _ in range(3):
        assert auth.session_state(sid, alice.id) is SessionState.UNKNOWN
    store.load = project.store.load
    assert auth.session_state(sid, alice.id) is SessionState.LIVE
    assert auth.session_state(sid, alice.id) is SessionState.LIVE
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "asok_green.auth"]
    assert [level for level, _ in records] == ["WARNING", "INFO"]
    assert "failing: StoreUnavailable" in records[0][1] and "store down" in records[0][1]
    assert "back after 3 failure(s)" in records[1][1]


def file_store(tmp_path):
    from asok.session import SessionStore

    return SessionStore(backend="file", path=str(tmp_path / "sessions"), ttl=3600)


def test_file_store_unreadable_directory_is_no_answer_and_missing_file_is_no_session(tmp_path):
    store = file_store(tmp_path)
    sid = secrets.token_hex(32)
    store.save(sid, {"user_id": 1})
    assert load_session(store, sid) == {"user_id": 1}
    assert load_session(store, secrets.token_hex(32)) is None
    sessions = tmp_path / "sessions"
    sessions.rename(tmp_path / "sessions-away")
    sessions.write_text("not a directory")  # every session path now fails with ENOTDIR
    with pytest.raises(StoreUnavailable, match="NotADirectoryError"):
        load_session(store, sid)
    sessions.unlink()
    (tmp_path / "sessions-away").rename(sessions)
    assert load_session(store, sid) == {"user_id": 1}


def test_file_store_refusing_a_session_id_is_no_session(tmp_path):
    assert load_session(file_store(tmp_path), "../../etc/passwd") is None


def test_redis_store_that_cannot_connect_is_no_answer(monkeypatch):
    from asok.session import SessionStore

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("ASOK_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    store = SessionStore(backend="redis")
    assert store.load("abc") is None  # what Asok itself answers
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        load_session(store, "abc")


# --- parse_cookie_header ---


def test_parse_cookie_header_pairs():
    assert parse_cookie_header("a=1; b = 2 ;c=x=y") == {"a": "1", "b": "2", "c": "x=y"}


def test_parse_cookie_header_quotes_percent_and_duplicates():
    header = 'a="quoted"; b=%3Ax; a=last'
    assert parse_cookie_header(header) == {"a": "last", "b": ":x"}


def test_parse_cookie_header_skips_pairs_without_name_or_equals():
    assert parse_cookie_header("flag; =orphan; ok=1") == {"ok": "1"}


def test_parse_cookie_header_ignores_oversized_headers():
    assert parse_cookie_header("a=" + "x" * 8192) == {}
    assert parse_cookie_header("a=" + "x" * 8000) == {"a": "x" * 8000}


@pytest.mark.parametrize("header", [None, "", b"a=1", 42, ["a=1"]])
def test_parse_cookie_header_never_raises(header):
    assert parse_cookie_header(header) in ({}, {"a": "1"})

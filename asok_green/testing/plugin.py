"""asok_green's pytest plugin, registered by the ``pytest11`` entry point: installing asok_green is enough.

Fixtures:

* ``asok_green_server`` (one per test session): the project's app and its
  WebSocket handlers served in the test process on a free port
  (:class:`~asok_green.testing.server.TestServer`);
* ``ws_client`` (one per test): a :class:`~asok_green.testing.client.TestClient`
  of that server; at the end of the test it closes the sockets still open, each
  once the server has run its ``on_disconnect``, so the next test starts clean.

Settings (``pytest.ini``, ``pyproject.toml`` or ``setup.cfg``):
``asok_green_app`` (default ``wsgi:app``), ``asok_green_root`` (the folder of
``wsgi.py``; default: the nearest folder at or above pytest's rootdir, else
above the working directory, that has one) and ``asok_green_timeout`` (seconds a receive
waits, default 5).

When the project has a ``wsgi.py``, the plugin makes ``from asok import
WebSocketServer`` give asok_green's class before any conftest or test module
is imported (as ``asok serve --gevent`` does), so a test that imports ``wsgi``
and the server share one app. In any other project it does nothing, and
imports nothing of asok_green's server. ``-p no:asok_green`` turns it off.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

_APP = "asok_green_app"
_ROOT = "asok_green_root"
_TIMEOUT = "asok_green_timeout"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's ini settings."""
    parser.addini(_APP, "the project's WSGI app for asok_green's test server, module:attribute", default="wsgi:app")
    parser.addini(_ROOT, "the project's folder (with wsgi.py), relative to the rootdir", default="")
    parser.addini(_TIMEOUT, "seconds a test WebSocket waits for a message before failing", default="5")


def project_root(config: pytest.Config) -> pathlib.Path | None:
    """The ``asok_green_root`` setting, else the nearest folder with a wsgi.py (from the rootdir, then the cwd)."""
    from .server import find_project_root

    setting = str(config.getini(_ROOT) or "").strip()
    if setting:
        return (config.rootpath / setting).resolve()
    return find_project_root(config.rootpath) or find_project_root()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """In an Asok project, swap in asok_green's ``WebSocketServer`` before conftests import the app."""
    if project_root(early_config) is None:
        return
    from ..api.websocket_server import WebSocketServer
    from ..bridge import bootstrap

    bootstrap.install_dropin(WebSocketServer)


@pytest.fixture(scope="session")
def asok_green_server(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The project's app and WebSocket handlers, served by asok_green in this process on a free port."""
    from .server import TestServer

    root = project_root(pytestconfig)
    if root is None:
        pytest.fail("asok_green_server: no wsgi.py in the rootdir or above the working directory (set asok_green_root)")
    server = TestServer(app=str(pytestconfig.getini(_APP)), root=root).start()
    yield server
    server.stop()


@pytest.fixture
def ws_client(asok_green_server: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """A client of the test server; the sockets it opened are closed (and done with) when the test ends."""
    client = asok_green_server.client(timeout=float(pytestconfig.getini(_TIMEOUT)))
    yield client
    client.close()

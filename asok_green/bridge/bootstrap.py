"""Make a process ready to serve: check gevent's patches, swap in the green server, load the app."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from . import asok_api, asok_framework


class BootstrapError(RuntimeError):
    """The process cannot serve: a message for the person who started it."""


def require_monkey_patched() -> None:
    """Refuse to run in a process that gevent has not monkey-patched."""
    from gevent import monkey

    if not (monkey.is_module_patched("socket") and monkey.is_module_patched("threading")):
        raise BootstrapError(
            "gevent has not monkey-patched this process: start it with "
            "`python -m asok_green serve` or `asok serve --gevent`, or call "
            "gevent.monkey.patch_all() before importing anything else"
        )


def install_dropin(server_class: type) -> None:
    """Make ``from asok import WebSocketServer`` (and ``asok.ws``'s) give ``server_class`` and our Connection.

    ``server_class`` is the public ``WebSocketServer`` (asok_green.api), which
    the processes above this layer pass in.
    """
    from ..server.connection import Connection

    asok_api.install_websocket_classes(server_class, Connection)
    asok_framework.install()
    asok_api.call_after_logout(functools.partial(_close_sockets_of_session, server_class))
    _advertise_websocket_endpoint()
    _offer_asokws_where_used()
    _offer_resume_client()


def _close_sockets_of_session(server_class: type, sid: str) -> None:
    """Close (1008) the WebSockets of a session that ``request.logout()`` just ended.

    The periodic session re-check would close them anyway; this makes a logout
    in the same process take effect immediately.
    """
    for server in server_class.instances():
        server.revoke_session(sid)


def _advertise_websocket_endpoint() -> None:
    """Make the script Asok puts in pages connect where this server listens.

    ``window.ASOK_WS_PORT`` is the port the page was loaded from (behind a proxy,
    the proxy's port: one port serves both), and with ``WS_PATH`` set
    ``window.ASOK_WS_PATH`` is written before Asok's script, as Asok writes its port.
    """
    from ..core.proxies import page_port, ws_path, ws_path_script

    def port(page: asok_api.Page, asok_port: Callable[[], int | None]) -> int | None:
        return page_port(page.environ) or asok_port()

    def path_then_client(page: asok_api.Page, add_client: Callable[[], None]) -> None:
        if page.gets_ws_client():
            prefix = ws_path(getattr(page.app, "config", None))
            if prefix:
                page.add_script(ws_path_script(prefix, page.nonce))
        add_client()

    asok_api.extend_page_step("ws_port", "page_port", port)
    asok_api.extend_page_step("ws_client", "ws_path", path_then_client)


def _offer_asokws_where_used() -> None:
    """Give ``window.asokWS`` to every page whose template calls it, as Asok's documentation promises.

    Asok 0.8 adds its WebSocket script only to pages that hold ``ws-`` or a live
    component, so the documentation's own ``window.asokWS('/chat')`` snippet on a
    plain page finds no helper. The script connects to ``/asok/live`` on load,
    so it is added where it is used rather than to every page.
    """

    def uses_client(page: asok_api.Page, asok_uses: Callable[[], bool]) -> bool:
        return asok_uses() or "asokWS" in page.content

    asok_api.extend_page_step("uses_ws_client", "asokws", uses_client)


def _offer_resume_client() -> None:
    """Load the resume client (``window.asokWS(path, {resume: true})``) on every page that calls ``asokWS``.

    It comes right after Asok's WebSocket script, from ``asok_green.bridge.browser_client``'s URL.
    Pages that only use Asok's live components do not get it.
    """
    from .browser_client import script_tag

    def client_then_resume(page: asok_api.Page, add_client: Callable[[], None]) -> None:
        adding = page.gets_ws_client()
        add_client()
        if adding and "asokWS" in page.content:
            page.add_script(script_tag(page.nonce))

    asok_api.extend_page_step("ws_client", "resume_client", client_then_resume)


def load_app(spec: str, directory: str | None = None) -> Any:
    """Import ``module:attribute`` (default attribute ``app``) from ``directory`` (default: cwd)."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    directory = os.path.abspath(directory or os.getcwd())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise BootstrapError(f"cannot import {module_name!r} from {directory}: no such module") from exc
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise BootstrapError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(app):
        raise BootstrapError(f"{spec} is not a WSGI application (not callable)")
    return app

"""Make a process ready to serve: check gevent's patches, swap in the green server, load the app."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any


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


def install_dropin() -> None:
    """Make ``from asok import WebSocketServer`` (and ``asok.ws``'s) give asok_green's classes."""
    import asok
    import asok.ws
    import asok.ws.server

    from .. import WebSocketServer  # the public class
    from ..server.connection import Connection

    for module in (asok, asok.ws, asok.ws.server):
        module.WebSocketServer = WebSocketServer
    asok.ws.Connection = Connection
    _close_sockets_on_logout()
    _advertise_websocket_endpoint()
    _offer_asokws_where_used()
    _offer_resume_client()


def _close_sockets_on_logout() -> None:
    """Make ``request.logout()`` close that session's WebSockets at once (1008).

    The periodic session re-check would close them anyway; this makes a logout
    in the same process take effect immediately.
    """
    from asok.request.auth import AuthMixin

    from .. import WebSocketServer  # the public class

    original = AuthMixin.logout
    if getattr(original, "closes_websockets", False):
        return

    @functools.wraps(original)
    def logout(request: Any) -> None:
        sid = getattr(request.session, "sid", None)
        original(request)
        if sid:
            for server in WebSocketServer.instances():
                server.revoke_session(sid)

    logout.closes_websockets = True
    AuthMixin.logout = logout


def _advertise_websocket_endpoint() -> None:
    """Make the script Asok puts in pages connect where this server listens.

    ``window.ASOK_WS_PORT`` is the port the page was loaded from (behind a proxy,
    the proxy's port: one port serves both), and with ``WS_PATH`` set
    ``window.ASOK_WS_PATH`` is written before Asok's script, as Asok writes its port.
    """
    from asok.core._asset_injector import AssetInjector

    from ..core.proxies import page_port, ws_path, ws_path_script

    resolve_port = getattr(AssetInjector, "_resolve_ws_port", None)
    inject_alive = getattr(AssetInjector, "_inject_alive", None)
    if resolve_port is None or inject_alive is None or getattr(inject_alive, "advertises_ws_path", False):
        return  # already done, or an Asok whose pages are built differently

    @functools.wraps(resolve_port)
    def _resolve_ws_port(injector: Any) -> int | None:
        return page_port(injector.request.environ) or resolve_port(injector)

    @functools.wraps(inject_alive)
    def _inject_alive(injector: Any) -> None:
        if injector._needs_alive():
            prefix = ws_path(getattr(injector.app, "config", None))
            if prefix:
                injector.request._asok_pending_scripts += ws_path_script(prefix, injector.nonce)
        inject_alive(injector)

    _inject_alive.advertises_ws_path = True
    AssetInjector._resolve_ws_port = _resolve_ws_port
    AssetInjector._inject_alive = _inject_alive


def _offer_asokws_where_used() -> None:
    """Give ``window.asokWS`` to every page whose template calls it, as Asok's documentation promises.

    Asok 0.8 adds its WebSocket script only to pages that hold ``ws-`` or a live
    component, so the documentation's own ``window.asokWS('/chat')`` snippet on a
    plain page finds no helper. The script connects to ``/asok/live`` on load,
    so it is added where it is used rather than to every page.
    """
    from asok.core._asset_injector import AssetInjector

    uses_components = getattr(AssetInjector, "_content_uses_components", None)
    if uses_components is None or getattr(uses_components, "offers_asokws", False):
        return

    @functools.wraps(uses_components)
    def _content_uses_components(injector: Any) -> bool:
        return uses_components(injector) or "asokWS" in injector.content

    _content_uses_components.offers_asokws = True
    AssetInjector._content_uses_components = _content_uses_components


def _offer_resume_client() -> None:
    """Load the resume client (``window.asokWS(path, {resume: true})``) on every page that calls ``asokWS``.

    It comes right after Asok's WebSocket script, from ``asok_green.bridge.browser_client``'s URL.
    Pages that only use Asok's live components do not get it.
    """
    from asok.core._asset_injector import AssetInjector

    from .browser_client import script_tag

    inject_alive = getattr(AssetInjector, "_inject_alive", None)
    if inject_alive is None or getattr(inject_alive, "offers_resume_client", False):
        return

    @functools.wraps(inject_alive)
    def _inject_alive(injector: Any) -> None:
        adding = injector._needs_alive()
        inject_alive(injector)
        if adding and "asokWS" in injector.content:
            injector.request._asok_pending_scripts += script_tag(injector.nonce)

    _inject_alive.offers_resume_client = True
    AssetInjector._inject_alive = _inject_alive


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

"""WebSocket route patterns such as ``/chat/[room]`` and the table that matches them.

One path, one route, one registry key. A WebSocket path is also the address
``ws.broadcast(path, ...)`` reaches, so a client is served only on the canonical
spelling of a path, and ``conn.path`` is exactly that spelling:

* The path is percent-decoded (as every WSGI server does before the app sees
  ``PATH_INFO``) and read as UTF-8: ``/chat/%67eneral`` is ``/chat/general``
  and ``/chat/caf%C3%A9`` is ``/chat/café``; both are the same route and the
  same registry key as the plain spelling, and ``conn.params`` holds the decoded
  value (``{"room": "general"}``). A decoded ``%2F`` is a separator like any
  ``/`` (``/chat/a%2Fb`` is ``/chat/a/b``), so a captured segment never holds a
  ``/``.
* The decoded path must be canonical: it starts with ``/``, has no empty segment
  (no ``//``, no trailing slash except for ``/`` itself), no ``.`` or ``..``
  segment, no control character, and is valid UTF-8. Anything else gets 404,
  like a static route of Asok's threaded server (``/notifications/``,
  ``//notifications`` and ``/./notifications`` are 404 there too). No path is
  rewritten into another: a client on ``/notifications/`` is told so at the
  handshake instead of being registered where no broadcast reaches it.

Route *patterns* are forgiving: ``@ws.on("/chat/[room]/")`` registers the same
route as ``@ws.on("/chat/[room]")``.
"""

from __future__ import annotations

from collections.abc import Callable

Handler = Callable[..., object]

_DOT_SEGMENTS = frozenset({".", ".."})


def split_path(path: str) -> tuple[str, ...]:
    """The non-empty segments of a URL path: ``"/chat/general/"`` -> ``("chat", "general")``."""
    return tuple(s for s in path.split("/") if s)


def is_canonical(path: str) -> bool:
    """True if ``path`` (already percent-decoded) is the one spelling a WebSocket is served on.

    ``/`` and ``/a/b`` are canonical; ``""``, ``a``, ``/a/``, ``//a``, ``/a/./b``,
    ``/a/../b`` and paths with control characters are not.
    """
    if not path.startswith("/"):
        return False
    if path == "/":
        return True
    for segment in path[1:].split("/"):
        if not segment or segment in _DOT_SEGMENTS:
            return False
    return not any(ord(c) < 0x20 or c == "\x7f" for c in path)


def request_path(path_info: str) -> str | None:
    """The canonical path of a request's WSGI ``PATH_INFO``, or None if it has none (answer 404).

    ``PATH_INFO`` is percent-decoded bytes carried as latin-1 (PEP 3333); they
    are read as UTF-8 here, so ``conn.path`` and ``conn.params`` are the text
    the client meant.
    """
    try:
        path = path_info.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None
    return path if is_canonical(path) else None


def _param_name(segment: str) -> str | None:
    if len(segment) > 2 and segment[0] == "[" and segment[-1] == "]":
        return segment[1:-1]
    return None


class Route:
    """One WebSocket path pattern and the handlers registered for it.

    A segment written ``[name]`` matches any single segment and is captured into
    ``conn.params["name"]``; every other segment must match exactly.
    """

    __slots__ = ("pattern", "segments", "params", "on_message", "on_connect", "on_disconnect", "subprotocols", "guard")

    def __init__(self, pattern: str):
        """Parse ``pattern``; handlers start unset, and no subprotocol is accepted."""
        self.pattern = pattern
        self.segments = split_path(pattern)
        self.params = tuple(_param_name(s) for s in self.segments)
        self.on_message: Handler | None = None
        self.on_connect: Handler | None = None
        self.on_disconnect: Handler | None = None
        #: The WebSocket subprotocols (``Sec-WebSocket-Protocol``) this route speaks.
        self.subprotocols: tuple[str, ...] = ()
        #: Who may open a socket here, when the route decides it itself (the live dashboard):
        #: ``guard(variables, who, origin_allowed)``, called once the session is resolved,
        #: returns None to accept the handshake or the refusal to answer. The Origin check
        #: is then the guard's to make (``origin_allowed`` is the server's verdict).
        self.guard: Handler | None = None

    @property
    def is_dynamic(self) -> bool:
        """True when the pattern captures at least one ``[param]``."""
        return any(self.params)

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        """The captured parameters if ``segments`` fit this pattern, else None."""
        if len(segments) != len(self.segments):
            return None
        captured: dict[str, str] = {}
        for expected, name, actual in zip(self.segments, self.params, segments):
            if name is not None:
                captured[name] = actual
            elif expected != actual:
                return None
        return captured

    def __repr__(self) -> str:
        return f"Route({self.pattern!r})"


class RouteTable:
    """All routes of one server: static patterns win over dynamic ones.

    Among dynamic patterns the one with more literal segments wins, then the one
    registered first, so ``/chat/lobby/[x]`` beats ``/chat/[room]/[x]``.
    """

    def __init__(self) -> None:
        """An empty table."""
        self._routes: dict[tuple[str, ...], Route] = {}
        self._dynamic: list[Route] = []

    def route(self, pattern: str) -> Route:
        """The route for ``pattern``, created on first use."""
        key = split_path(pattern)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = Route(pattern)
            if found.is_dynamic:
                self._dynamic.append(found)
                self._dynamic.sort(key=lambda r: -sum(p is None for p in r.params))
        return found

    def match(self, path: str) -> tuple[Route | None, dict[str, str]]:
        """``(route, params)`` for a decoded request path, or ``(None, {})``.

        Only a canonical path (:func:`is_canonical`) matches anything: the
        path a connection is registered under is then the path it asked for.
        """
        if not is_canonical(path):
            return None, {}
        segments = split_path(path)
        found = self._routes.get(segments)
        if found is not None and not found.is_dynamic:
            return found, {}
        for candidate in self._dynamic:
            params = candidate.match(segments)
            if params is not None:
                return candidate, params
        return None, {}

    def __iter__(self):
        return iter(self._routes.values())

    def __contains__(self, pattern: str) -> bool:
        return split_path(pattern) in self._routes

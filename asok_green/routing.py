"""WebSocket route patterns such as ``/chat/[room]`` and the table that matches them."""

from __future__ import annotations

from collections.abc import Callable

Handler = Callable[..., object]


def split_path(path: str) -> tuple[str, ...]:
    """The non-empty segments of a URL path: ``"/chat/general/"`` -> ``("chat", "general")``."""
    return tuple(s for s in path.split("/") if s)


def _param_name(segment: str) -> str | None:
    if len(segment) > 2 and segment[0] == "[" and segment[-1] == "]":
        return segment[1:-1]
    return None


class Route:
    """One WebSocket path pattern and the handlers registered for it.

    A segment written ``[name]`` matches any single segment and is captured into
    ``conn.params["name"]``; every other segment must match exactly.
    """

    __slots__ = ("pattern", "segments", "params", "on_message", "on_connect", "on_disconnect")

    def __init__(self, pattern: str):
        """Parse ``pattern``; handlers start unset."""
        self.pattern = pattern
        self.segments = split_path(pattern)
        self.params = tuple(_param_name(s) for s in self.segments)
        self.on_message: Handler | None = None
        self.on_connect: Handler | None = None
        self.on_disconnect: Handler | None = None

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
        """``(route, params)`` for ``path`` (query string excluded), or ``(None, {})``."""
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

"""What the server, the cluster and ops ask of the web framework behind the app: a port the bridge fills.

Those layers import no framework. For the few answers only the framework has
(whether an app is one of its own, its gauge of open sockets, which adapter
objects are its placeholders, the database connections it keeps per thread)
they ask :func:`current`; the
layer that knows the framework (asok_green.bridge) installs its answers with
:func:`install` as soon as Asok is in use: a hub bound to an Asok app, the
drop-in installed, a session cookie read. Until then the answers are those
of a plain WSGI app, which has no framework behind it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Framework", "current", "install"]


class Framework:
    """The answers for a plain WSGI app; asok_green.bridge installs a subclass that knows Asok."""

    def owns(self, app: Any) -> bool:
        """True if ``app`` is an app of this framework."""
        return False

    def count_open_sockets(self, count: int) -> None:
        """Tell the framework's own metrics that ``count`` WebSockets are open (before it answers a scrape)."""

    def adapter_cannot_publish(self, adapter: Any) -> bool:
        """True for an ``adapter=`` object that claims to be the framework's adapter but cannot publish."""
        return False

    def adapter_publishes_nothing(self, adapter: Any) -> bool:
        """True for the framework's own single-process adapter, which has nothing to pass on."""
        return False

    def release_thread_connections(self) -> None:
        """Close the database connections the framework keeps for the calling thread (after offloaded work)."""


_current = Framework()


def current() -> Framework:
    """The framework's answers, as installed (those of a plain WSGI app until one is)."""
    return _current


def install(framework: Framework) -> None:
    """Make ``framework`` answer from now on, for the whole process."""
    global _current
    _current = framework

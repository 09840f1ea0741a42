"""Every Asok name asok_green uses, public or private: the one module that imports asok.

The rest of asok_green calls the functions here, each named for what it needs
(``session_store(app)``), and never names anything of Asok's own.

asok is imported inside each function, never when this module is imported:
asok must be imported after gevent has patched the process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["session_store"]


def session_store(app: Any) -> Any | None:
    """The app's session store, or None for an app without one."""
    return getattr(app, "_session_store", None)

"""``conn.request``: the Asok ``Request`` a WebSocket's handshake would have been.

Asok's threaded server gives every connection a request built from its
handshake, and Asok code reads it: GraphQL's ``GRAPHQL_AUTHORIZE`` hook, live
components. Here it is built by the same Asok function
(:func:`asok_green.bridge.asok_api.build_pseudo_request`), only when first
asked for, and completed with what the handshake already knows (the client's
address, the scheme, the user), so that reading ``request.user`` never looks
the session up again.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from . import asok_api

_BODY_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding"})


def handshake_request(conn: Any) -> Any:
    """An ``asok.request.Request`` for ``conn``'s handshake: headers, cookies, path, address, user, session.

    ``conn`` is a :class:`~asok_green.server.connection.Connection`, which
    calls this through its ``request_factory`` (installed by asok_green.bridge.asok_framework).
    """
    # A handshake has no body for the Request to read: its body headers would make it try.
    headers = {k: v for k, v in conn.headers.items() if k not in _BODY_HEADERS}
    view = SimpleNamespace(path=conn.path, headers=headers, user=conn.user, session=conn.session)
    request = asok_api.build_pseudo_request(conn.server, view)
    environ = request.environ
    addr = conn.addr
    if isinstance(addr, tuple) and addr:
        environ["REMOTE_ADDR"] = str(addr[0])
        if len(addr) > 1:
            environ["REMOTE_PORT"] = str(addr[1])
    # A TLS socket has a cipher: the page was https, the socket wss.
    environ["wsgi.url_scheme"] = "https" if getattr(conn.sock, "cipher", None) is not None else "http"
    # The handshake resolved the user (None for a guest): Asok would look the session up again.
    request.user = conn.user
    return request

"""The test's client of a :class:`~asok_green.testing.server.TestServer`: WebSockets and pages, as any user.

    client = server.client()
    with client.websocket("/chat/general", user=alice) as ws:
        ws.send("hi")
        assert ws.receive() == "alice: hi"
    assert client.get("/").status == 200
    client.close()          # closes what is still open, once the server is done with each

A user is a model instance with an ``id`` (or an id): the client logs in as
that user without a login page (:mod:`asok_green.testing.login`) and sends the
session cookies with the handshake.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .websocket import TestWebSocket

__all__ = ["TestClient", "Response"]


@dataclass
class Response:
    """An HTTP answer of the server (redirects are not followed)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class TestClient:
    """Opens WebSockets and fetches pages from one :class:`TestServer`; closes its sockets on :meth:`close`."""

    __test__ = False

    def __init__(self, server: Any, timeout: float = 5.0) -> None:
        """A client of ``server``; ``timeout`` is how long a receive waits by default, in seconds."""
        self.server = server
        self.timeout = timeout
        self._sockets: list[TestWebSocket] = []

    def login(self, user: Any) -> dict[str, str]:
        """The session cookies of ``user`` (a user object with an ``id``, or an id)."""
        return self.server.login(user)

    def websocket(
        self,
        path: str,
        *,
        user: Any = None,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        subprotocols: tuple[str, ...] | list[str] = (),
        timeout: float | None = None,
        presence_frames: bool = False,
    ) -> TestWebSocket:
        """Open a WebSocket to ``path`` (as ``user`` if given); returns once the server runs it.

        By then the connection is registered and the route's ``on_connect``
        has returned. ``origin`` defaults to the server's own (a same-site
        page); a refused handshake raises :class:`HandshakeRefused` with its
        HTTP status.
        """
        sent = dict(cookies or {})
        if user is not None:
            sent.update(self.login(user))
        socket = TestWebSocket(
            self.server.ws_url,
            path,
            server=self.server,
            cookies=sent,
            headers=headers,
            origin=origin or self.server.url,
            subprotocols=subprotocols,
            timeout=self.timeout if timeout is None else timeout,
            presence_frames=presence_frames,
        )
        self._sockets.append(socket)
        return socket

    def get(self, path: str, *, user: Any = None, headers: dict[str, str] | None = None) -> Response:
        """GET ``path`` from the server (as ``user`` if given)."""
        return self.request("GET", path, user=user, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        user: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Response:
        """One HTTP request to the server over the same port as the WebSockets."""
        sent = dict(headers or {})
        if user is not None:
            cookies = "; ".join(f"{name}={value}" for name, value in self.login(user).items())
            sent["Cookie"] = f"{sent['Cookie']}; {cookies}" if "Cookie" in sent else cookies
        request = urllib.request.Request(self.server.url + path, data=data, method=method, headers=sent)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.timeout) as answer:
                return Response(answer.status, dict(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, dict(error.headers.items()), error.read())

    def close(self) -> None:
        """Close every WebSocket still open, each once the server is done with it (its ``on_disconnect`` ran)."""
        sockets, self._sockets = self._sockets, []
        failures = []
        for socket in sockets:
            try:
                socket.close()
            except AssertionError as error:
                failures.append(str(error))
        if failures:
            raise AssertionError("closing the test's WebSockets:\n" + "\n".join(failures))

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

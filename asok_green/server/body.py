"""A request body that must keep coming: a deadline on every read and a minimum average rate.

A client that announces a body and then goes silent (or trickles it a byte at
a time) would otherwise hold its socket and greenlet for as long as it likes.
:class:`BodyReader` stands between pywsgi's body reader and the socket: each
read must return something within ``timeout`` seconds, and once ``timeout``
seconds have passed the body must have arrived at ``min_rate`` bytes per
second on average since its start (Apache's ``mod_reqtimeout`` rule; nginx's
``client_body_timeout`` is the first half). A body that stalls or ends early
raises :class:`BodyError`, an ``OSError`` that pywsgi treats as a client gone
away (the connection is closed, nothing is logged as a server error).
"""

from __future__ import annotations

import errno
import time
from typing import Any

import gevent

__all__ = ["BodyCutShort", "BodyError", "BodyReader", "BodyStalled"]


class BodyError(OSError):
    """The body did not arrive as announced; the connection cannot be read further."""

    #: The status a response not yet started answers with.
    status = 400

    def __init__(self, message: str) -> None:
        """``message`` says what went wrong (no client bytes in it)."""
        # ECONNRESET: pywsgi closes the connection quietly on it when an app lets it through.
        super().__init__(errno.ECONNRESET, message)


class BodyStalled(BodyError):
    """The client stopped sending its body (no bytes within the timeout, or below the minimum rate)."""

    status = 408


class BodyCutShort(BodyError):
    """The client closed its side before the body it announced was complete."""


class BodyReader:
    """Reads of ``rfile`` (a buffered socket reader) held to the body deadlines.

    Answers the ``read`` and ``readline`` that pywsgi's ``Input`` calls.
    """

    __slots__ = ("rfile", "timeout", "min_rate", "started", "received")

    def __init__(self, rfile: Any, timeout: float, min_rate: float) -> None:
        """Deadlines start now; ``timeout`` of 0 or less turns them off."""
        self.rfile = rfile
        self.timeout = timeout
        self.min_rate = min_rate
        self.started = time.monotonic()
        self.received = 0

    def _call(self, method: Any, size: int) -> bytes:
        if self.timeout <= 0:
            return method(size)
        try:
            with gevent.Timeout(self.timeout):
                data = method(size)
        except gevent.Timeout:
            raise BodyStalled(f"no body bytes within {self.timeout:g}s") from None
        self.received += len(data)
        elapsed = time.monotonic() - self.started
        if self.min_rate > 0 and elapsed > self.timeout and self.received < (elapsed - self.timeout) * self.min_rate:
            raise BodyStalled(f"body slower than {self.min_rate:g} bytes/s")
        return data

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (all there are if negative), each socket read within the deadline.

        As a buffered file's ``read``, it returns fewer only at the end of the
        stream, which for a body of announced length means it was cut short:
        :class:`BodyCutShort`.
        """
        parts = []
        if size is None or size < 0:
            while chunk := self._call(self.rfile.read1, 65536):
                parts.append(chunk)
            return b"".join(parts)
        left = size
        while left > 0:
            chunk = self._call(self.rfile.read1, min(left, 65536))
            if not chunk:
                raise BodyCutShort(f"body ended {left} bytes short")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def readline(self, size: int = -1) -> bytes:
        """One line (at most ``size`` bytes), within the deadline."""
        return self._call(self.rfile.readline, size)

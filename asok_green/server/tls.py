"""TLS on the one port: a server-side context from a certificate chain and its key."""

from __future__ import annotations

import os
import ssl
from typing import Any


class TLSConfigError(ValueError):
    """The certificate or key cannot be used: a message for the person who started the server."""


def check_tls_files(certfile: str | None, keyfile: str | None) -> None:
    """Refuse a key without a certificate, and files that are not there."""
    if keyfile and not certfile:
        raise TLSConfigError("--keyfile needs --certfile")
    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path and not os.path.isfile(path):
            raise TLSConfigError(f"{option} {path}: no such file")


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A context for serving https and wss: TLS 1.2 or later, HTTP/1.1 offered by ALPN.

    ``keyfile`` may be omitted when ``certfile`` holds the key too. The context
    is gevent's (its sockets cooperate with the hub), whether or not the
    process has been patched yet.
    """
    import gevent.ssl

    check_tls_files(certfile, keyfile)
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot load the certificate {certfile} and key {keyfile or certfile}: {exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def server_tls_options(certfile: str | None, keyfile: str | None) -> dict[str, Any]:
    """Keyword arguments for ``make_server``/``serve`` that serve TLS; none without a certificate.

    The TLS handshake is left to the first read of the request, so it runs
    within the server's handshake timeout (a client that opens a connection
    and never finishes the handshake is dropped with the other slow clients),
    and a failed handshake (a plain-text client, a port scanner) ends that
    connection quietly instead of as an error with a traceback.
    """
    check_tls_files(certfile, keyfile)
    if not certfile:
        return {}
    return {"ssl_context": server_context(certfile, keyfile), "do_handshake_on_connect": False}

"""Bytes in, events out: the WebSocket wire, with no I/O.

Frames and their parser (RFC 6455), permessage-deflate (RFC 7692), the
request head (RFC 9112) and the upgrade handshake, the ``asok-green.v1``
envelopes, and the encoded-once outgoing message. Everything here is pure:
it may import the standard library and other ``protocol`` modules only; no
gevent, no asok, nothing above it.
"""

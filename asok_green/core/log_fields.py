"""The fields of a structured log line about a connection or an HTTP request.

Every log call about a connection passes ``extra=conn_fields(conn, event, ...)``
and the access log passes ``extra=request_fields(handler)``: with Asok's
``LOG_FORMAT=json`` (:mod:`asok_green.ops.jsonlog`) they become the line's
JSON fields, in the names Asok's own lines use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["conn_fields", "request_fields"]


def conn_fields(conn: Any, event: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a line about ``conn``: event, connection id, route pattern, path, and ``fields``."""
    addr = conn.addr
    conn_id = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
    route = None
    try:
        found = conn.server.match(conn.path)[0]
        route = found.pattern if found is not None else None
    except Exception:
        pass
    return {"event": event, "conn": conn_id, "route": route, "path": conn.path, **fields}


def request_fields(handler: Any) -> dict[str, Any]:
    """The ``extra=`` of an access-log line, in the fields Asok's JSON lines use for requests."""
    started, finished = getattr(handler, "time_start", None), getattr(handler, "time_finish", None)
    duration = round((finished - started) * 1000, 3) if started and finished else None
    addr = handler.client_address
    status = getattr(handler, "code", None)
    return {
        "event": "http_request",
        "method": getattr(handler, "command", None),
        "path": getattr(handler, "path", None),
        "status": status,
        "duration_ms": duration,
        "ip": addr[0] if isinstance(addr, tuple) else addr,
        "bytes": getattr(handler, "response_length", None),
    }

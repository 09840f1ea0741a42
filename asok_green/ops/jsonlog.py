"""Structured logs: with Asok's ``LOG_FORMAT=json``, every line is one JSON object.

The caller hands :func:`configure` and :func:`announce` the JSON formatter:
the processes give Asok's own (``timestamp``, ``level``, ``logger``,
``message``, then the record's extra fields; asok_green.process.logs), so
asok_green's lines sit beside Asok's in the same shape. The main log calls pass
their fields with ``extra=``: an ``event`` name, and where the line has them the
connection (``conn``, its ``ip:port``), the ``route`` pattern, the ``path``,
the ``close_code`` and the ``cause``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..core.log_fields import conn_fields, request_fields

__all__ = ["JsonFormatter", "announce", "conn_fields", "configure", "json_requested", "request_fields"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Makes the formatter of JSON lines (a new one at each call).
JsonFormatter = Callable[[], logging.Formatter]


def json_requested(config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when Asok's settings ask for JSON lines: ``LOG_FORMAT``, ``ASOK_LOG_FORMAT`` or the app's config."""
    env = os.environ if environ is None else environ
    fmt = (config or {}).get("LOG_FORMAT") or env.get("ASOK_LOG_FORMAT") or env.get("LOG_FORMAT", "")
    return str(fmt).lower() == "json"


def _formatter(json_lines: bool, json_formatter: JsonFormatter) -> logging.Formatter:
    return json_formatter() if json_lines else logging.Formatter(_TEXT_FORMAT)


class DefaultEvent(logging.Filter):
    """Gives every record an ``event`` field: its own, or ``"log"`` (``"http_request"`` for the access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the default event name when the line has none; never drops a line."""
        if not hasattr(record, "event"):
            record.event = "http_request" if record.name.endswith(".access") else "log"
        return True


_DEFAULT_EVENT = DefaultEvent()


def configure(level: str, json_formatter: JsonFormatter, config: Mapping[str, Any] | None = None) -> None:
    """One line per event on stderr: JSON objects (``json_formatter()``'s) when Asok's settings ask for them, else text.

    Called again once the app is loaded (its config may say ``LOG_FORMAT``):
    the root handler's formatter is replaced then.
    """
    json_lines = json_requested(config)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for handler in root.handlers:
        handler.setFormatter(_formatter(json_lines, json_formatter))
        if json_lines and _DEFAULT_EVENT not in handler.filters:
            handler.addFilter(_DEFAULT_EVENT)
    if json_lines:
        # Asok's loggers keep their own handlers; gevent's pywsgi prints tracebacks to stderr itself.
        json_type = type(json_formatter())
        for name in _asok_loggers():
            for handler in logging.getLogger(name).handlers:
                if not isinstance(handler.formatter, json_type):
                    handler.setFormatter(json_formatter())
                if _DEFAULT_EVENT not in handler.filters:
                    handler.addFilter(_DEFAULT_EVENT)


def _asok_loggers() -> list[str]:
    """Asok's loggers that may hold handlers of their own (``asok``, ``asok.security``, any ``asok.*`` made)."""
    made = [name for name in logging.root.manager.loggerDict if name.startswith("asok.")]
    return ["asok", "asok.security", *(name for name in made if name != "asok.security")]


def announce(
    message: str,
    event: str,
    level: str = "INFO",
    stream: Any = None,
    *,
    json_formatter: JsonFormatter,
    **fields: Any,
) -> None:
    """Print one line from a process without logging set up (the ``--workers`` parent).

    ``asok_green: message`` as text, or with ``LOG_FORMAT=json`` one JSON object
    (``json_formatter()``'s) with ``event`` and ``fields``.
    """
    stream = stream or sys.stdout
    if json_requested():
        record = logging.LogRecord("asok_green", getattr(logging, level), __file__, 0, message, None, None)
        record.__dict__.update(fields, event=event)
        line = json_formatter().format(record)
    else:
        line = f"asok_green: {message}"
    print(line, file=stream, flush=True)

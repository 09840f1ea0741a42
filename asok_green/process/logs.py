"""The processes' log lines: text, or with ``LOG_FORMAT=json`` JSON objects in the shape of Asok's own.

asok_green.ops.jsonlog does the work; this is where the processes hand it
Asok's JSON formatter (asok_green.bridge.asok_api), which ops may not import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..bridge.asok_api import json_log_formatter
from ..ops import jsonlog

__all__ = ["announce", "configure_logging"]


def configure_logging(level: str, config: Mapping[str, Any] | None = None) -> None:
    """One line per event on stderr, with time, level and logger (JSON objects with ``LOG_FORMAT=json``)."""
    jsonlog.configure(level, json_log_formatter, config)


def announce(message: str, event: str, level: str = "INFO", stream: Any = None, **fields: Any) -> None:
    """Print one line from a process without logging set up (the ``--workers`` parent); see ops.jsonlog.announce."""
    jsonlog.announce(message, event, level, stream, json_formatter=json_log_formatter, **fields)

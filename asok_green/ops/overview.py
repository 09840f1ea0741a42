"""What the live dashboard shows: a snapshot of one hub, and the handshakes refused lately.

:func:`build_snapshot` is pure: it reads a hub's counters, state core, routes and
node (or anything shaped like them) and returns a JSON-able dict. The rates
(messages per second, handler time over the last interval) come from the
totals of the previous snapshot, which the caller passes back in.

"The handshakes refused lately" come from the server's record of them
(:data:`asok_green.core.refusals.REFUSALS`).
"""

from __future__ import annotations

import time
from typing import Any

from ..core.refusals import REFUSALS, RefusalLog
from .samples import connections_by_route

#: How many room rows and online user ids a snapshot carries at most.
MAX_ROOMS = 100
MAX_USERS = 50

#: The hub's counters of connections it closed on its own, by what the dashboard calls them.
CLOSES = {
    "slow_consumers": "slow_consumers_closed",
    "rate_limited": "rate_limited",
    "protocol_errors": "protocol_errors",
    "keepalive": "keepalive_closed",
    "revoked": "revoked",
}


def _handler_totals(hub: Any, hidden: str | None) -> dict[str, dict[str, float]]:
    """Handler calls and seconds by route pattern (but ``hidden``), from ``hub.handler_times``.

    The same counters the Prometheus metrics read (asok_green.core.timing).
    """
    times = hub.handler_times
    totals: dict[str, dict[str, float]] = {}
    for route in hub.routes:
        if route.pattern == hidden:
            continue
        entry = {"calls": 0, "seconds": 0.0, "messages": 0}
        seen = set()
        for slot in ("on_message", "on_connect", "on_disconnect"):
            handler = getattr(route, slot, None)
            if handler is None or id(handler) in seen:
                continue
            seen.add(id(handler))
            calls = times.calls(handler)
            entry["calls"] += calls
            entry["seconds"] += times.seconds(handler)
            if slot == "on_message":
                entry["messages"] += calls
        totals[route.pattern] = entry
    return totals


def _rooms(state: Any, limit: int) -> tuple[int, list[dict]]:
    rows = []
    for name in state.known_rooms():
        local = len(state.rooms.get(name, ()))
        rows.append({"room": name, "connections": local, "users": len(state.room_users(name))})
    rows.sort(key=lambda row: (-row["users"], -row["connections"], row["room"]))
    return len(rows), rows[:limit]


def _online(state: Any, limit: int) -> dict:
    users = state.online_users()
    return {"count": len(users), "here": len(state.local_users), "first": [_json_id(u) for u in users[:limit]]}


def _json_id(user_id: Any) -> Any:
    return user_id if isinstance(user_id, (int, str)) and not isinstance(user_id, bool) else str(user_id)


def _nodes(hub: Any, connections: int) -> list[dict]:
    state = hub.state
    node = hub.node
    distributed = bool(getattr(node, "distributed", False))
    this = {
        "id": getattr(node, "node_id", None) or "this process",
        "self": True,
        "users": len(state.local_users),
        "connections": connections,
        "rooms": len(state.rooms),
        "redis": ("up" if getattr(node, "connected", False) else "down") if distributed else None,
    }
    others = []
    for node_id in sorted(state.live_nodes()):
        users, room_users = state.node_holding(node_id)
        others.append(
            {
                "id": node_id,
                "self": False,
                "users": len(users),
                "connections": None,
                "rooms": len({room for room, _ in room_users}),
                "redis": "up",
            }
        )
    return [this, *others]


def _rate(now_total: float, before_total: float, seconds: float) -> float:
    return max(0.0, now_total - before_total) / seconds if seconds > 0 else 0.0


def build_snapshot(
    hub: Any,
    *,
    now: float,
    previous: dict | None = None,
    refusals: RefusalLog | None = None,
    max_rooms: int = MAX_ROOMS,
    max_users: int = MAX_USERS,
    watchers: str | None = None,
) -> dict:
    """A JSON-able picture of ``hub`` at monotonic time ``now``.

    ``previous`` is the snapshot before this one (rates are 0 without it).
    ``hub`` needs ``stats`` (a Counter), ``state`` (an
    :class:`asok_green.core.state.HubState`), ``routes``, ``node`` and
    ``handler_times`` (an :class:`asok_green.core.timing.HandlerTimes`).
    Messages out are ``stats["messages_sent"]``. ``watchers`` is the dashboard's
    own route pattern: its sockets are counted as ``watchers``, not among the
    app's connections and handlers.
    """
    state = hub.state
    stats = hub.stats
    handlers = _handler_totals(hub, watchers)
    totals = {
        "messages_in": sum(entry["messages"] for entry in handlers.values()),
        "messages_out": stats.get("messages_sent", 0),
        "handler_calls": sum(entry["calls"] for entry in handlers.values()),
        "handler_seconds": sum(entry["seconds"] for entry in handlers.values()),
        "connections_opened": stats.get("connections_opened", 0),
        **{name: stats.get(key, 0) for name, key in CLOSES.items()},
    }
    interval = now - previous["now"] if previous else 0.0
    before = previous["totals"] if previous else totals
    before_handlers = {row["pattern"]: row for row in previous["handlers"]} if previous else {}
    calls_now = totals["handler_calls"] - before["handler_calls"]
    rates = {
        "messages_in": _rate(totals["messages_in"], before["messages_in"], interval),
        "messages_out": _rate(totals["messages_out"], before["messages_out"], interval),
        "slow_consumers": _rate(totals["slow_consumers"], before["slow_consumers"], interval),
        "handler_ms": (totals["handler_seconds"] - before["handler_seconds"]) * 1000 / calls_now if calls_now else 0.0,
    }
    by_pattern = connections_by_route(hub)
    watching = by_pattern.pop(watchers, 0) if watchers is not None else 0
    handler_rows = []
    for pattern, entry in handlers.items():
        last = before_handlers.get(pattern)
        recent_calls = entry["calls"] - last["calls"] if last else 0
        recent_seconds = entry["seconds"] - last["seconds"] if last else 0.0
        handler_rows.append(
            {
                "pattern": pattern,
                "connections": by_pattern.get(pattern, 0),
                "calls": entry["calls"],
                "seconds": entry["seconds"],
                "mean_ms": entry["seconds"] * 1000 / entry["calls"] if entry["calls"] else 0.0,
                "recent_ms": recent_seconds * 1000 / recent_calls if recent_calls > 0 else 0.0,
            }
        )
    room_count, rooms = _rooms(state, max_rooms)
    return {
        "now": now,
        "time": time.time(),
        "connections": state.count - watching,
        "watchers": watching,
        "handshakes": len(state.reservations),
        "path_count": len(state.by_path) - (1 if watching else 0),
        "totals": totals,
        "rates": rates,
        "handlers": handler_rows,
        "room_count": room_count,
        "rooms": rooms,
        "online": _online(state, max_users),
        "nodes": _nodes(hub, state.count - watching),
        "refusals": (refusals or REFUSALS).view(),
    }

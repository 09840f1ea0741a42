"""Pure decisions: who is where, what is allowed, what must be announced.

The hub's state (paths, rooms, presence: the one owner of them), routing,
Origin and proxy policies, limits, the outage tracker, rate-limited log
lines, the interface of a cluster node, and the port through which the
layers above ask the web framework behind the app (the bridge fills it).
Transitions return what must be said; nothing here does I/O or yields. May
import ``protocol`` and the standard library; no gevent, no asok.
"""

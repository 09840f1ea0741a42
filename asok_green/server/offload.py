"""Blocking calls off the event loop: ``asok_green.blocking(fn, *args, **kwargs)``.

Every connection of the process is served by greenlets of one thread. A call
that blocks that thread (a SQLite query, a file read, a C library, a long
computation) stalls every client until it returns. :func:`blocking` runs such a
call in a small pool of native threads instead; the calling greenlet waits for
it, and every other greenlet keeps running meanwhile.

The pool has ``WS_BLOCKING_THREADS`` threads (default 10, read from the
environment when the pool is made). That bounds the work in flight: when every
thread is busy, the next ``blocking`` call waits in its own greenlet (nothing is
queued on its behalf) until a thread is free. A flood of slow calls therefore
costs the waiting greenlets, never an unbounded queue. The pool is asok_green's
own, not gevent's hub threadpool, so slow database calls cannot hold up gevent's
DNS resolver, which runs in the hub's pool.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Any, TypeVar

from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from ..core import framework

__all__ = ["blocking", "call_on_loop", "DEFAULT_THREADS"]

T = TypeVar("T")

#: Threads in the pool when ``WS_BLOCKING_THREADS`` is not set.
DEFAULT_THREADS = 10

# The real thread primitives: monkey-patched ones would name greenlets, not threads.
_native_thread_id = get_original("_thread", "get_ident")
_native_local = get_original("_thread", "_local")

_pool: ThreadPool | None = None
_pool_thread: int | None = None
_pool_pid: int | None = None
_in_worker = _native_local()


def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a worker thread and return its result; re-raise what it raises.

    Use it in a handler that calls something which blocks the thread instead of
    yielding to gevent: SQLite (Asok's ORM on SQLite: ``Model.find``, ``create``,
    queries), reading or writing files, a client library written in C that does
    its own I/O, ``requests`` in a process gevent did not patch, or CPU-heavy
    work (hashing a password, resizing an image)::

        @ws.on("/report")
        def report(conn, message):
            rows = asok_green.blocking(Order.where, status=message)
            conn.send_json([row.id for row in rows])   # back on the loop: safe

    ``fn`` sees the caller's context variables. Asok's per-thread database
    connections that ``fn`` opened are closed in the worker thread when it
    returns, so a worker holds no database file between calls.

    Do not touch the server from inside ``fn``: ``ws.broadcast``, ``conn.send``,
    rooms and presence belong to the loop's thread and are not thread-safe; call
    them after ``blocking`` returns. Do not hand ``fn`` an object that owns a
    gevent socket made on the loop (a Redis client, a ``requests.Session``
    already used there): gevent sockets cannot move between threads. Code that
    already yields to gevent (patched sockets: Redis, HTTP clients) needs no
    ``blocking`` at all. Asok's model events (``created``, ``updated``,
    ``deleted``) fire in the thread that writes the model: a listener that
    touches the server hands that work to :func:`call_on_loop`.

    Called from a thread other than the loop's (e.g. inside another ``blocking``
    call), ``fn`` simply runs there.
    """
    pool = _pool_for_this_thread()
    if pool is None:
        return fn(*args, **kwargs)
    context = contextvars.copy_context()
    ok, outcome = pool.spawn(_run, context, fn, args, kwargs).get()
    if ok:
        return outcome
    raise outcome


def call_on_loop(fn: Callable[..., Any], /, *args: Any) -> None:
    """Call ``fn(*args)`` in the loop's thread: at once if called there, else at the loop's next turn.

    For code that may run inside a :func:`blocking` call and must touch the
    server (a listener of Asok's model events that broadcasts, for instance).
    From a worker thread this only schedules the call and returns at once.
    """
    pool = _pool
    if pool is None or _native_thread_id() == _pool_thread:
        fn(*args)
        return
    pool.hub.loop.run_callback_threadsafe(fn, *args)


def _run(context: contextvars.Context, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
    """In the worker: call ``fn`` in the caller's context, release Asok's DB connections, hand back the outcome.

    The exception travels back as a value, so gevent does not print it as an
    unhandled error of the pool: the caller decides what it means.
    """
    _in_worker.active = True
    try:
        return True, context.run(fn, *args, **kwargs)
    except BaseException as error:
        return False, error
    finally:
        _in_worker.active = False
        release_db_connections()


def release_db_connections() -> None:
    """Close the database connections the app's framework keeps for the current thread (Asok's ORM does)."""
    framework.current().release_thread_connections()


def pool_size(environ: dict[str, str] | None = None) -> int:
    """Threads in the pool: ``WS_BLOCKING_THREADS``, else :data:`DEFAULT_THREADS` (at least 1)."""
    raw = (os.environ if environ is None else environ).get("WS_BLOCKING_THREADS", "")
    return max(1, int(raw)) if raw.strip() else DEFAULT_THREADS


def _pool_for_this_thread() -> ThreadPool | None:
    """The pool, made on first use by the loop's thread; None in any other thread."""
    global _pool, _pool_thread, _pool_pid
    if getattr(_in_worker, "active", False):
        return None
    here = _native_thread_id()
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPool(pool_size())
        _pool_thread, _pool_pid = here, os.getpid()
    return _pool if here == _pool_thread else None

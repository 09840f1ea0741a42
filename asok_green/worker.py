"""gunicorn's worker class path: ``gunicorn -k asok_green.worker.GeventWebSocketWorker``.

The worker lives in :mod:`asok_green.process.gunicorn_worker`; this short path
is the one deployments name.
"""

from .process.gunicorn_worker import GeventWebSocketWorker

__all__ = ["GeventWebSocketWorker"]

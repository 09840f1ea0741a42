"""Processes: the CLI, the dev server, workers, SIGHUP restarts and drain, deploy files, gunicorn.

The top layer: it may import every layer below it and the public API.
"""

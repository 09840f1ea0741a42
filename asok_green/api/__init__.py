"""The public API, composed: what ``asok_green``'s top-level names are made of.

Here the layers meet: the server (``server``) gets the endpoints and hooks of
the layers above it (the resume client's script from ``bridge``, the
dashboard and metrics from ``ops``) plugged into its seams, and
:func:`asok_green.serve` / :func:`asok_green.make_server` are built from them.
May import every layer below it (protocol, core, server, cluster, history,
bridge, ops); never ``process``, which drives it.
"""

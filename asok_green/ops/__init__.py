"""What an operator reads: metrics, the live dashboard, JSON logs.

May import the layers below (server, cluster, history, core, protocol);
not ``bridge`` (its sibling) nor ``api`` or ``process``.
"""

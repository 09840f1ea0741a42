"""Beyond this process: the nodes the hub talks to.

The single-process node, the Redis cluster, the local channel a restart's
two generations share, and Asok's own adapters. Each implements the node
interface of ``core.node``. May import ``server``, ``core`` and
``protocol``; not ``history`` (its sibling) nor anything above.
"""

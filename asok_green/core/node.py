"""What the hub asks of the world beyond its process: the node interface, and the single-process node.

The hub calls a :class:`Node` after each change it applies: :meth:`Node.publish`
for a broadcast already delivered to its own clients, :meth:`Node.local_changes`
for the presence changes of its own connections. Neither may yield. The Redis
cluster (asok_green.cluster.redis_node) is one implementation; :data:`SINGLE_PROCESS`,
which has no one to tell, is the other. What the other nodes hold comes back to
the hub through its ``node_synced`` / ``node_added`` / ``node_removed`` /
``node_down`` methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..protocol.outgoing import Outgoing


class ClusterConfigError(ValueError):
    """The cluster settings cannot work: a message for the person who started the server.

    Raised by the nodes and the stores that need a cluster (asok_green.cluster,
    asok_green.history) and shown by the serving process as it is.
    """


class Node(Protocol):
    """This process as one node of a server: where broadcasts and presence changes go beyond it."""

    #: True when other processes take part (a cluster), False for a process on its own.
    distributed: bool
    #: This node's id in its cluster (None on its own).
    node_id: str | None
    #: Broadcasts queued here and not yet passed on (0 when there is nothing to pass on).
    backlog: int

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Pass on a broadcast already delivered here; never yields.

        ``target``: ``"path"``, ``"room"``, or ``"signal"`` (to a room's members, live
        only: the other nodes deliver it without keeping it in any history).
        """

    def local_changes(self, changes: list[Any]) -> None:
        """Pass on what a state transition returned (the ``Local*`` changes matter); never yields."""

    def stop(self) -> None:
        """Leave the other nodes (may yield, bounded)."""


class SingleProcess:
    """The node of a server that runs in one process: nothing to tell anyone."""

    distributed = False
    node_id = None
    backlog = 0

    def publish(self, target: str, name: str, message: Outgoing) -> None:
        """Nothing to do: the hub has delivered it to every client there is."""

    def local_changes(self, changes: list[Any]) -> None:
        """Nothing to do: no other node keeps a view of this one."""

    def stop(self) -> None:
        """Nothing to leave."""


#: The node of every server that is not part of a cluster.
SINGLE_PROCESS = SingleProcess()

"""How big each measurement is: the full run, or the tiny one of ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Plan:
    """Sizes, counts and durations of one bench run."""

    #: Idle connection levels, opened cumulatively; RSS is read at each.
    sizes: list[int] = field(default_factory=lambda: [1000, 5000, 10000, 19000])
    #: Subscriber counts for the fan-out measurement (each must be one of ``sizes``).
    fanout: list[int] = field(default_factory=lambda: [1000, 10000])
    #: Broadcast deliveries aimed for per fan-out size (rounds = this / subscribers, 5..30).
    fanout_deliveries: int = 100_000
    #: Bytes of the ``data`` field of each broadcast message.
    message_size: int = 128
    #: Idle WebSockets held while wrk measures HTTP (one of ``sizes``).
    http_idle: int = 10000
    http_seconds: float = 5.0
    http_connections: int = 32
    echo_clients: int = 100
    echo_seconds: float = 3.0
    #: Interleaved rounds of echo and handshakes over all peers (medians reported).
    rate_rounds: int = 3
    handshakes: int = 3000
    handshake_concurrency: int = 32
    handshake_seconds: float = 8.0
    #: Seconds each loadgen process may take to open its connections.
    open_timeout: float = 120.0
    #: Connections per level in the idle-memory experiment on asok_green variants.
    experiment_size: int = 5000
    #: Profile asok_green's hot paths with py-spy (extra passes after the measured ones).
    profile: bool = True
    profile_seconds: float = 4.0
    #: Run the idle-memory experiment (asok_green with handshake state dropped).
    experiment: bool = True

    def fanout_rounds(self, subscribers: int) -> int:
        """Broadcast rounds for ``subscribers``: enough deliveries for a stable CPU figure."""
        return max(5, min(30, self.fanout_deliveries // max(1, subscribers)))

    @classmethod
    def quick(cls) -> Plan:
        """A run of seconds with a few dozen connections: for the smoke test."""
        return cls(
            sizes=[20, 50],
            fanout=[20, 50],
            fanout_deliveries=100,
            http_idle=50,
            http_seconds=1.0,
            echo_clients=10,
            echo_seconds=1.0,
            rate_rounds=1,
            handshakes=100,
            handshake_concurrency=8,
            handshake_seconds=3.0,
            open_timeout=30.0,
            experiment_size=50,
            profile=False,
            profile_seconds=1.0,
            experiment=False,
        )

    def check(self) -> None:
        """Refuse plans whose fan-out or HTTP sizes are not idle levels."""
        self.sizes = sorted(set(self.sizes))
        missing = [n for n in [*self.fanout, self.http_idle] if n not in self.sizes]
        if missing:
            raise SystemExit(f"bench: fan-out and --http-idle sizes must be among --sizes; not: {missing}")

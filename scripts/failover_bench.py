"""What clients lose when Redis fails over under Sentinel, or a node dies: measured, per client kind.

    python scripts/failover_bench.py [--rate 50] [--pause 10] [--ttl 3] [--json FILE]

Three scenarios, each on a fresh set of real parts (tests/failover_support.py):
Debian's redis-server twice (a primary and its replica), three redis-sentinel
processes (quorum 2, ``down-after-milliseconds`` 1000, ``failover-timeout``
3000), two ``asok serve --gevent`` nodes on ``WS_REDIS_URL=redis+sentinel://``;
alice logged in on node A, bob on node B; on each node a plain client of a path
without history (``plain``), a plain client of a path that keeps history
(``plain, history path``) and an ``asok-green.v1`` resume client of that path
(``v1``, asok_green.client.ResumingClient); one sender per node publishing
``rate`` broadcasts a second to both paths.

* ``primary SIGKILL``: the primary is killed; the sentinels promote the replica.
* ``primary SIGSTOP``: the primary is paused ``pause`` seconds (past the
  sentinels' down-after: they promote the replica), then resumed (it comes back
  as a replica).
* ``node SIGKILL``: node B is killed; only node A's clients and sender count,
  and the presence that is right is alice alone.

For each kind: delivered / sent (distinct messages, every client), out of
order (per sender), duplicates, continuity-lost notices, the longest time a
client went without a message, and, per scenario, the time from the fault until
a new primary answered and until every live node's presence list was right
again. Nothing is asserted: it prints (and writes ``--json``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib.machine import describe  # noqa: E402
from tests.asok_project import login, make_project  # noqa: E402
from tests.cluster_support import user_ids  # noqa: E402
from tests.conftest import INTROSPECTION  # noqa: E402
from tests.failover_support import (  # noqa: E402
    FAILOVER_ROUTES,
    Reader,
    Sender,
    SentinelSet,
    online_on,
    sentinel_node,
    tally,
)

KINDS = (("plain", "/live/fo"), ("plain-history", "/feed/fo"), ("v1", "/feed/fo"))
LABELS = {"plain": "plain", "plain-history": "plain, history path", "v1": "v1 (resume client)"}


class PresenceWatch(threading.Thread):
    """Polls every live node's online list; remembers when it was last wrong."""

    def __init__(self, nodes: list, expected: list):
        """Watch ``nodes`` (a list that may shrink) against ``expected`` (may be replaced)."""
        super().__init__(daemon=True)
        self.nodes, self.expected = nodes, sorted(expected)
        self.last_wrong: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stopping.is_set():
            for node in list(self.nodes):
                if online_on(node) != self.expected:
                    self.last_wrong = time.monotonic()
            self.stopping.wait(0.1)

    def stop(self) -> None:
        """Stop polling."""
        self.stopping.set()
        self.join(5)


def scenario(name: str, project: pathlib.Path, folder: pathlib.Path, args) -> dict:
    """Run one scenario on fresh parts; its results as a dict."""
    group = SentinelSet(folder)
    nodes, readers, senders, tabs = [], [], [], []
    watch = None
    try:
        nodes = [sentinel_node(project, folder, group.url, args.ttl) for _ in range(2)]
        ids = user_ids(project)
        import websocket

        for name_, node in (("alice", nodes[0]), ("bob", nodes[1])):
            cookie = login(node.url, name_)["asok_session"]
            header = [f"Cookie: asok_session={cookie}"]
            tabs.append(websocket.create_connection(f"{node.ws_url}/live/tab", origin=node.url, header=header))
        counted = [0] if name == "node SIGKILL" else [0, 1]
        for index in counted:
            for kind, path in KINDS:
                node = nodes[index]
                readers.append(Reader(f"{node.ws_url}{path}", kind, str(index), node.url))
        for reader in readers:
            reader.start()
        watch = PresenceWatch(list(nodes), [ids["alice"], ids["bob"]])
        deadline = time.monotonic() + 10
        while any(online_on(n) != watch.expected for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
        watch.start()
        senders = [Sender(nodes[i], f"n{i}", "fo", args.rate) for i in counted]
        started = time.monotonic()
        for sender in senders:
            sender.start()
        time.sleep(args.warm)

        fault = time.monotonic()
        answered = None
        old = group.primary
        if name == "primary SIGKILL":
            old.signal(signal.SIGKILL)
            _, answered = group.wait_failover(old.port)
        elif name == "primary SIGSTOP":
            old.signal(signal.SIGSTOP)
            try:
                _, answered = group.wait_failover(old.port)
                time.sleep(max(0.0, fault + args.pause - time.monotonic()))
            finally:
                old.signal(signal.SIGCONT)
        else:
            watch.nodes.remove(nodes[1])
            watch.expected = [ids["alice"]]
            watch.last_wrong = fault
            nodes[1].proc.send_signal(signal.SIGKILL)
            nodes[1].proc.wait(10)
        time.sleep(args.after)
        for sender in senders:
            sender.stop()
        ended = time.monotonic()
        last = {s.sent[-1][1] for s in senders if s.sent}
        drain = time.monotonic() + 20
        while time.monotonic() < drain and not all(last <= {text for _, text in r.received.messages} for r in readers):
            time.sleep(0.1)
        watch.stop()
        for reader in readers:
            reader.stop()
        sent = [text for sender in senders for _, text in sender.sent]
        kinds = {
            kind: asdict(tally([r for r in readers if r.received.kind == kind], sent, started, ended))
            for kind, _ in KINDS
        }
        presence_right = None if watch.last_wrong is None else round(max(0.0, watch.last_wrong - fault), 2)
        logs = [node.log() for node in nodes]
        return {
            "scenario": name,
            "kinds": kinds,
            "primary_answered_after": None if answered is None else round(answered - fault, 2),
            "presence_right_after": presence_right,
            "presence_right_after_primary": (
                None
                if answered is None or watch.last_wrong is None
                else round(max(0.0, watch.last_wrong - answered), 2)
            ),
            "reconnects_v1": sum(r.received.reconnects for r in readers if r.v1),
            "log_lines": {
                "unreachable": [log.count("unreachable (") for log in logs],
                "back": [log.count("is back:") for log in logs],
                "tracebacks": [log.count("Traceback") for log in logs],
                "causes": [re.findall(r"unreachable \((.*?)\): serving", log) for log in logs],
            },
        }
    finally:
        if watch is not None:
            watch.stop()
        for sender in senders:
            sender.stop()
        for reader in readers:
            reader.stop()
        for tab in tabs:
            try:
                tab.close(timeout=0.5)
            except Exception:
                pass
        for node in nodes:
            node.stop()
        group.stop()


def table(results: list[dict], args) -> str:
    """The results as a Markdown table."""
    lines = [
        "| scenario | clients | delivered / sent | out of order | duplicates | continuity lost "
        "| longest without a message | longest without one sender's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for kind, label in LABELS.items():
            t = result["kinds"][kind]
            share = 100.0 * t["delivered"] / t["sent"] if t["sent"] else 0.0
            lines.append(
                f"| {result['scenario']} | {label} ×{t['clients']} | {t['delivered']:,} / {t['sent']:,} "
                f"({share:.2f}%) | {t['out_of_order']} | {t['duplicates']} | {t['continuity_lost']} "
                f"| {t['longest_silence']:.2f} s | {t['longest_sender_gap']:.2f} s |"
            )
    lines += ["", "| scenario | new primary answered after | presence right everywhere after | log lines |"]
    lines += ["|---|---|---|---|"]
    for result in results:
        answered = result["primary_answered_after"]
        presence = result["presence_right_after"]
        after_primary = result["presence_right_after_primary"]
        presence_text = "never wrong" if presence is None else f"{presence:.2f} s after the fault"
        if after_primary is not None:
            presence_text += f" ({after_primary:.2f} s after the new primary answered)"
        logs = result["log_lines"]
        lines.append(
            f"| {result['scenario']} | {'-' if answered is None else f'{answered:.2f} s'} | {presence_text} "
            f"| unreachable {logs['unreachable']}, back {logs['back']}, tracebacks {logs['tracebacks']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the scenarios and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="broadcasts a second from each node's sender")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds the primary is paused (SIGSTOP)")
    parser.add_argument("--ttl", type=float, default=3.0, help="WS_PRESENCE_TTL of the nodes")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds of traffic before the fault")
    parser.add_argument("--after", type=float, default=8.0, help="seconds of traffic after the fault is over")
    parser.add_argument(
        "--scenarios", default="primary SIGKILL,primary SIGSTOP,node SIGKILL", help="comma-separated, in order"
    )
    parser.add_argument("--json", type=pathlib.Path, help="write the results here too")
    args = parser.parse_args()
    machine = describe()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}, "
        f"load {machine['load_before']:.2f} before"
    )
    print(f"rate {args.rate}/s per node, pause {args.pause} s, WS_PRESENCE_TTL {args.ttl} s", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        project = make_project(pathlib.Path(tmp) / "project", extra_wsgi=INTROSPECTION + FAILOVER_ROUTES)
        for i, name in enumerate(s.strip() for s in args.scenarios.split(",")):
            folder = pathlib.Path(tmp) / f"scenario-{i}"
            folder.mkdir()
            results.append(scenario(name, project, folder, args))
            print(f"{name}: done", flush=True)
    print(table(results, args))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine, "args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()

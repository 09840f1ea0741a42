"""The Python resume client through a link-cutting proxy, and across SIGHUP restarts: the figures.

    python scripts/client_soak.py                          # 60 s at 20 messages/s, every link cut every 2 s
    python scripts/client_soak.py --seconds 10 --restarts 2

A generated Asok project is served by ``asok serve --gevent`` (its ``/feed/*``
paths keep history in the default SQLite store). A publisher in this script
broadcasts ``m<i>`` through a page at ``--rate`` a second for ``--seconds``; one
:class:`asok_green.client.ResumingClient` reads the stream through a TCP proxy
that cuts every link every ``--cut-every`` seconds. With ``--restarts N`` the
server is also sent SIGHUP N times, evenly spread. Printed: sent, received, in
order, duplicates delivered, continuity lost, links, cuts, replayed,
duplicates the client dropped, the links the server closed with 1012 (a
restart; a cut may take a link first) and whether another process serves at
the end.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import tempfile
import threading

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.asok_project import make_project, project_env  # noqa: E402
from tests.conftest import asok_serve  # noqa: E402
from tests.test_python_client import PUBLISH_PAGE, ROUTES, run_through_cuts  # noqa: E402
from tests.test_restarts import add_pages, http_pid  # noqa: E402


def main() -> int:
    """Run the soak; print the figures as JSON; exit 1 if a message was lost, repeated or out of order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second")
    parser.add_argument("--cut-every", type=float, default=2.0, help="seconds between two cuts of every link")
    parser.add_argument("--restarts", type=int, default=0, help="SIGHUPs to the server during the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="client-soak-") as tmp:
        root = add_pages(make_project(pathlib.Path(tmp) / "project", extra_wsgi=ROUTES))
        (root / "src/pages/publish").mkdir(parents=True, exist_ok=True)
        (root / "src/pages/publish/page.py").write_text(PUBLISH_PAGE)
        server = asok_serve(root, pathlib.Path(tmp), env=project_env(WS_DRAIN_SECONDS="2"))
        stop = threading.Event()
        pids = [http_pid(server.port)]
        try:
            if args.restarts:
                interval = args.seconds / (args.restarts + 1)

                def restarter() -> None:
                    for _ in range(args.restarts):
                        if stop.wait(interval):
                            return
                        server.proc.send_signal(signal.SIGHUP)

                threading.Thread(target=restarter, daemon=True).start()
            figures = run_through_cuts(server.port, "/feed/soak", args.seconds, args.rate, args.cut_every)
            pids.append(http_pid(server.port))
        finally:
            stop.set()
            server.stop()
    figures.update(seconds=args.seconds, rate=args.rate, cut_every=args.cut_every, restarts=args.restarts)
    figures["serving_pid_changed"] = pids[0] != pids[-1]
    print(json.dumps(figures, indent=2))
    whole = figures["in_order"] and figures["received"] == figures["sent"] and not figures["duplicates_delivered"]
    return 0 if whole else 1


if __name__ == "__main__":
    sys.exit(main())

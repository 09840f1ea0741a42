#!/usr/bin/env python
"""The echo server of scripts/echo_server.py, optionally over TLS, for scripts/tls_bench.py.

    python scripts/tls_echo_server.py --port 9443 [--certfile server.pem --keyfile server.key]

Every message on every path is sent back to its sender; with a certificate the
port serves https and wss, through the same ``ssl_context`` as
``asok serve --gevent --certfile``.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from echo_server import CatchAllServer, EchoApp, echo  # noqa: E402

from asok_green.api.serving import serve  # noqa: E402
from asok_green.server.tls import server_tls_options  # noqa: E402


def main(argv=None):
    """Parse the command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ws = CatchAllServer(compression=False)
    ws.catch_all.on_message = echo
    serve(EchoApp(), ws, host=args.host, port=args.port, **server_tls_options(args.certfile, args.keyfile))


if __name__ == "__main__":
    main()

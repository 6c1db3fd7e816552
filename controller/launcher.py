"""Start the Ryu controller app on Python 3.11 (the eventlet shim) bound to 127.0.0.1.

python -m netkv.controller.launcher --config CONTROLLER.json [--of-port 6653] [--rest-port 8080]

Ryu 4.34's ryu/app/wsgi.py imports eventlet.wsgi.ALREADY_HANDLED, which eventlet >= 0.30.3 removed;
Ryu's WSGI code only compares responses against it, so a private sentinel restores the import.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="controller JSON config (written by the network runner)")
    ap.add_argument("--of-port", type=int, default=6653, help="OpenFlow listen port on 127.0.0.1")
    ap.add_argument("--rest-port", type=int, default=8080, help="REST API port on 127.0.0.1")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    if not os.path.exists(a.config):
        print(f"netkv controller: error: --config: {a.config} does not exist", file=sys.stderr)
        return 2
    os.environ["NETKV_CONTROLLER_CONFIG"] = os.path.abspath(a.config)

    import eventlet.wsgi

    if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
        eventlet.wsgi.ALREADY_HANDLED = object()
    from ryu.cmd import manager

    args = [
        "--ofp-listen-host",
        "127.0.0.1",
        "--ofp-tcp-listen-port",
        str(a.of_port),
        "--wsapi-host",
        "127.0.0.1",
        "--wsapi-port",
        str(a.rest_port),
    ]
    if a.verbose:
        args.append("--verbose")
    return manager.main(args=[*args, "netkv.controller.ryu_app"]) or 0


if __name__ == "__main__":
    sys.exit(main())

"""Start the Ryu controller app on Python 3.11 (the eventlet shim) bound to 127.0.0.1.

python -m netkv.controller.launcher --config CONTROLLER.json [--of-port 6653 | --of-socket PATH] [--rest-port 8080]

Ryu 4.34's ryu/app/wsgi.py imports eventlet.wsgi.ALREADY_HANDLED, which eventlet >= 0.30.3 removed;
Ryu's WSGI code only compares responses against it, so a private sentinel restores the import.

With --of-socket, OpenFlow is served on a Unix socket (switches in their own network namespaces
reach it through the file system). Ryu's stream server already listens on a path; only its
Datapath sets TCP_NODELAY on every connection, which a Unix socket refuses, so the launcher wraps
such sockets in a shim whose TCP options are no-ops.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys


class _UnixSocketShim:
    """A Unix stream socket that accepts (and ignores) TCP-level socket options."""

    def __init__(self, sock):
        self._sock = sock

    def setsockopt(self, level, opt, value):
        if level == socket.IPPROTO_TCP:
            return None
        return self._sock.setsockopt(level, opt, value)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _accept_unix_datapaths() -> None:
    from ryu.controller import controller

    original = controller.Datapath.__init__

    def init(self, sock, address):
        if getattr(sock, "family", None) == socket.AF_UNIX:
            sock = _UnixSocketShim(sock)
        original(self, sock, address)

    controller.Datapath.__init__ = init


def _exit_if_openflow_cannot_listen(where: str) -> None:
    """Ryu opens its OpenFlow listener in a green thread, whose exception it only logs: a port in use
    would leave a controller that answers REST and never sees a switch (the fabric then waits out its
    ready timeout). End the process instead, saying why (the fabric reports the controller's exit)."""
    from ryu.controller import controller

    serve = controller.OpenFlowController.server_loop

    def server_loop(self, *args, **kwargs):
        try:
            return serve(self, *args, **kwargs)
        except OSError as e:
            print(f"netkv controller: error: cannot listen for OpenFlow on {where}: {e.strerror or e}", flush=True)
            os._exit(2)

    controller.OpenFlowController.server_loop = server_loop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="controller JSON config (written by the network runner)")
    ap.add_argument("--of-port", type=int, default=6653, help="OpenFlow listen port (on --of-host)")
    ap.add_argument(
        "--of-host",
        default="127.0.0.1",
        help="OpenFlow listen address: 127.0.0.1, or the cluster's private address when switches run on other servers",
    )
    ap.add_argument("--of-socket", default="", help="serve OpenFlow on this Unix socket path instead")
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

    if a.of_socket:
        if not os.path.isdir(os.path.dirname(os.path.abspath(a.of_socket))):
            print(f"netkv controller: error: --of-socket: no directory for {a.of_socket}", file=sys.stderr)
            return 2
        _accept_unix_datapaths()
    _exit_if_openflow_cannot_listen(a.of_socket or f"{a.of_host}:{a.of_port}")
    args = [
        "--ofp-listen-host",
        os.path.abspath(a.of_socket) if a.of_socket else a.of_host,
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

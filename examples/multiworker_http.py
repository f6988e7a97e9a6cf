"""A pre-fork HTTP service: N worker processes serve one dbzero prefix.

    python examples/multiworker_http.py --root ./web-data --port 8080 --workers 4
    curl -X POST localhost:8080/hit        # {"count": 1, "worker": 12345}
    curl localhost:8080/count              # {"count": 1, ...}

The parent opens the prefix as a *shared writer* (``shared=True``), creates the root
object, binds the socket and forks the workers.  In each worker the prefix reopens
lazily, shared again (docs/processes.md, "Fork").  Writes go through
``db0.transaction``: a worker whose commit conflicts with another worker's re-runs the
increment, so the counter is exact.  Reads call ``db0.refresh()`` first (a few hundred
nanoseconds when nothing changed) to see the other workers' latest commits.

Stop it with Ctrl-C or SIGTERM; the parent stops the workers.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dbzero as db0  # noqa: E402


@db0.memo(singleton=True, id="examples.multiworker.Stats")
class Stats:
    def __init__(self):
        self.count = 0
        self.by_worker = {}


class Handler(BaseHTTPRequestHandler):
    stats: Stats = None     # set in each worker

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.path != "/hit":
            return self._reply(404, {"error": "not found"})
        stats, me = self.stats, str(os.getpid())

        def hit():
            stats.count += 1
            stats.by_worker[me] = stats.by_worker.get(me, 0) + 1
            return stats.count

        count = db0.transaction(hit)          # retried on conflicts, never lost
        self._reply(200, {"count": count, "worker": os.getpid()})

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/count":
            return self._reply(404, {"error": "not found"})
        db0.refresh()                         # see the other workers' commits
        stats = self.stats
        self._reply(200, {"count": stats.count, "by_worker": dict(stats.by_worker),
                          "worker": os.getpid()})

    def log_message(self, fmt: str, *args) -> None:  # keep the console quiet
        pass


def serve(sock: socket.socket) -> None:
    """Worker process: serve requests on the inherited listening socket."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Handler.stats = db0.fetch(Stats)
    server = HTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        db0.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./web-data", help="dbzero storage root")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    db0.init(args.root, prefix="web", shared=True)
    if not db0.exists(Stats):
        db0.transaction(Stats)                # several services may race to create it
    db0.commit()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(256)
    host, port = sock.getsockname()
    print(f"listening on http://{host}:{port} with {args.workers} workers", flush=True)

    workers = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(sock)
            except SystemExit:
                pass
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        workers.append(pid)

    def stop(*_):
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in workers:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    sock.close()
    db0.close()


if __name__ == "__main__":
    main()

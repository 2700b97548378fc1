"""The example's HTTP backend: answers every GET after DELAY_MS, like a service doing real work,
so that load shows up as concurrent (active) connections. Says which instance answered."""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = float(os.environ.get("DELAY_MS", "100")) / 1000
LABEL = os.environ.get("INSTANCE_LABEL", os.environ.get("BOXER_INSTANCE_NAME", "api")).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        time.sleep(DELAY)
        body = LABEL + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # one line per request would drown the logs
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 256
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1] if len(sys.argv) > 1 else 8080)),
                    Handler).serve_forever()

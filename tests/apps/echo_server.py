"""A small threaded TCP server used as an unmodified application in the lab tests.

The first line of each connection picks what it does:
  ECHO            echo everything back until EOF
  SHA <n>         read n bytes, answer their sha256 (hex) and a newline
  PEER            answer "<peer ip> <peer port> <own ip> <own port> <hostname>" as the server sees them
"""

import hashlib
import socket
import socketserver
import sys


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        command = self.rfile.readline().decode().split()
        if not command:
            return
        if command[0] == "ECHO":
            # read1: bytes that arrived with the command line sit in rfile's buffer already
            while chunk := self.rfile.read1(65536):
                self.request.sendall(chunk)
        elif command[0] == "SHA":
            remaining = int(command[1])
            digest = hashlib.sha256()
            while remaining:
                chunk = self.rfile.read1(min(remaining, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
            self.wfile.write(digest.hexdigest().encode() + b"\n")
        elif command[0] == "PEER":
            peer = self.request.getpeername()
            own = self.request.getsockname()
            self.wfile.write(f"{peer[0]} {peer[1]} {own[0]} {own[1]} {socket.gethostname()}\n".encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


if __name__ == "__main__":
    with Server(("0.0.0.0", int(sys.argv[1])), Handler) as server:
        server.serve_forever()

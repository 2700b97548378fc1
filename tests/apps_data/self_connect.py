"""An instance connects to its own overlay name and address (as a host may connect to its own
name): listen, connect by gethostname(), exchange bytes, print what both ends see, as JSON."""

import json
import socket
import threading

srv = socket.create_server(("0.0.0.0", 7070))
accepted = {}


def serve():
    conn, peer = srv.accept()
    with conn:
        accepted.update(peer=peer[0], local=conn.getsockname()[0], data=conn.recv(5).decode())
        conn.sendall(b"world")


t = threading.Thread(target=serve)
t.start()
name = socket.gethostname()
addr = socket.gethostbyname(name)
with socket.create_connection((name, 7070), timeout=10) as c:
    c.sendall(b"hello")
    reply = c.recv(5).decode()
    seen = {"local": c.getsockname()[0], "peer": c.getpeername()[0]}
t.join(10)
try:
    socket.create_connection((name, 7071), timeout=10).close()
    refused = None
except OSError as e:
    refused = e.errno
print(json.dumps({"name": name, "addr": addr, "reply": reply, "client": seen, "server": accepted,
                  "nothing_listening": refused}))

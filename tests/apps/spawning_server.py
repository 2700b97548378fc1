"""An overlay server that starts a subprocess before every accept (issue 12, item 2).

    spawning_server.py PORT [COMMAND...]

Listens on PORT; before each accept runs COMMAND (default `true`) with subprocess.run, as a
server shelling out to a helper does (CPython spawns with vfork and closes the child's
descriptors with close_range). Each accepted client gets one line: the peer address the server
saw and the command's exit status, "<ip> <port> <status>".
"""

import socket
import subprocess
import sys

port = int(sys.argv[1])
command = sys.argv[2:] or ["true"]
with socket.create_server(("", port)) as listener:
    while True:
        status = subprocess.run(command, check=False).returncode
        conn, peer = listener.accept()
        with conn:
            conn.sendall(f"{peer[0]} {peer[1]} {status}\n".encode())

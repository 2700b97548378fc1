"""regrtest with CPython's test host set to this host's own address instead of localhost:
`python cpython_own_host.py ADDR|own REGRTEST-ARGS...` ("own": what gethostname() resolves to,
under boxer the instance's overlay address). The socket tests then bind, listen, accept and
connect on that address: under boxer, the overlay's path to the instance itself."""

import runpy
import socket
import sys

from test.support import socket_helper

addr = socket.gethostbyname(socket.gethostname()) if sys.argv[1] == "own" else sys.argv[1]
socket_helper.HOST = socket_helper.HOSTv4 = addr
socket_helper.bind_port.__defaults__ = (addr,)  # captured when socket_helper was imported
sys.argv = ["python -m test", *sys.argv[2:]]
runpy.run_module("test", run_name="__main__", alter_sys=True)

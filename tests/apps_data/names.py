"""Name lookups an application makes, printed as JSON (run under boxer run in the lab)."""

import json
import socket

out = {}
out["fqdn"] = socket.getfqdn()
out["hostname"] = socket.gethostname()
out["v6mapped"] = sorted({a[4][0] for a in socket.getaddrinfo("kv", 6379, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED)})
out["unspec"] = sorted({a[4][0] for a in socket.getaddrinfo("kv", 6379)})
addr = socket.gethostbyname("kv")
out["byname"] = addr
out["byaddr"] = socket.gethostbyaddr(addr)[0]
out["nameinfo"] = socket.getnameinfo((addr, 6379), 0)[0]
try:
    socket.getaddrinfo("kv", 6379, socket.AF_INET6)
    out["v6_only"] = "found"
except socket.gaierror as e:
    out["v6_only"] = e.errno
print(json.dumps(out))

"""Every way an application looks a name up, for each name on the command line, printed as JSON:
{name: {call: result or "error <errno>"}}. Run plain and under boxer run, the two outputs of the
names libc answers locally (/etc/hosts, localhost...) must be the same."""

import json
import socket
import sys


def attempt(call):
    try:
        return call()
    except OSError as e:
        return f"error {type(e).__name__} {e.errno}"


def addrinfo(name, family, flags=0):
    return attempt(lambda: sorted({f"{a[0].name} {a[4][0]}" for a in socket.getaddrinfo(
        name, 80, family, socket.SOCK_STREAM, 0, flags)}))


def ex(name):
    host, aliases, addrs = socket.gethostbyname_ex(name)
    return [host, sorted(aliases), sorted(addrs)]


out = {}
for name in sys.argv[1:]:
    out[name] = {
        "unspec": addrinfo(name, socket.AF_UNSPEC),
        "inet": addrinfo(name, socket.AF_INET),
        "inet6": addrinfo(name, socket.AF_INET6),
        "inet6_mapped": addrinfo(name, socket.AF_INET6, socket.AI_V4MAPPED),
        "canonname": attempt(lambda n=name: socket.getaddrinfo(n, None, socket.AF_INET, 0, 0,
                                                               socket.AI_CANONNAME)[0][3]),
        "byname": attempt(lambda n=name: socket.gethostbyname(n)),
        "byname_ex": attempt(lambda n=name: ex(n)),
    }
for addr in ("127.0.0.1", "::1"):
    out[addr] = {
        "nameinfo": attempt(lambda a=addr: socket.getnameinfo((a, 80), socket.NI_NAMEREQD)[0]),
        "byaddr": attempt(lambda a=addr: socket.gethostbyaddr(a)[0]),
    }
print(json.dumps(out, sort_keys=True))

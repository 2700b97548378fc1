"""What this kernel and sandbox let the agent do, probed once at start.

Lambda's sandbox is a Firecracker microVM with its own kernel and a seccomp filter; a kernel or
filter without one of the calls boxer uses must cost a slower path, never the instance. Each
probe makes the real call once, harmlessly, and records whether it worked; the agent reads the
answers (`current()`) where it has a fallback:

| feature | used for | without it |
|---|---|---|
| pidfd_open | noticing the app's exit on the event loop | a thread waits for the app |
| sock_diag | counting the instance's open TCP connections (netlink) | /proc/net/tcp |
| SO_REUSEPORT | punching from the port whose public endpoint the coordinator saw | every connection through the relay |
| PR_SET_CHILD_SUBREAPER | adopting an app that daemonizes | a daemonized app is outside the agent |
| close_range | closing descriptors before exec (CPython's subprocess) | CPython closes them one by one |
| splice | the relay's zero-copy path (coordinator side only) | - |
| SCM_RIGHTS | handing sockets to the app | nothing works: boxer cannot run |
| TCP_INFO | seeing a cut path to the coordinator early | the keepalive's timeout |
| AF_UNIX, AF_INET, AF_INET6, AF_NETLINK | the families the agent and interposer open | - |

`probe_lambda_report()` adds what `boxer probe-lambda` shows: kernel, user, limits, /tmp,
capabilities, seccomp, whether LD_PRELOAD is honoured.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import resource
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Feature", "Features", "current", "detect", "probe_lambda_report"]

log = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
PR_GET_CHILD_SUBREAPER = 37
SYS_CLOSE_RANGE = 436  # x86-64 and arm64 alike (the generic syscall table)


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str  # the error when it failed, e.g. "ENOSYS"
    fallback: str  # what boxer does without it


def _error(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno)) if exc.errno else str(exc)


def _probe(name: str, fallback: str, call: Any) -> Feature:
    try:
        detail = call() or "ok"
    except OSError as exc:
        return Feature(name, False, _error(exc), fallback)
    except (AttributeError, NotImplementedError) as exc:  # not in this Python / libc
        return Feature(name, False, str(exc), fallback)
    return Feature(name, True, str(detail), fallback)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pidfd() -> None:
    os.close(os.pidfd_open(os.getpid()))


def _close_range() -> None:
    # An empty range far above any descriptor: closes nothing, but the kernel must know the call.
    libc = _libc()
    if libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(0x7FFFFFF0), ctypes.c_uint(0x7FFFFFFF), 0) != 0:
        raise OSError(ctypes.get_errno(), "close_range")


def _sock_diag() -> None:
    from boxer.agent import sockdiag

    sockdiag.open_tcp_ports()


def _reuseport() -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _subreaper() -> str:
    value = ctypes.c_int(0)
    if _libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
    return "ok"


def _splice() -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w, b"x")
        os.splice(r, w2, 1)
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


def _scm_rights() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        socket.send_fds(a, [b"x"], [a.fileno()])
        _, fds, _, _ = socket.recv_fds(b, 1, 1)
        for fd in fds:
            os.close(fd)


def _family(family: int, kind: int = socket.SOCK_STREAM) -> Any:
    def call() -> None:
        socket.socket(family, kind).close()
    return call


def _tcp_info() -> None:
    with socket.socket() as sock:
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)


@dataclass(frozen=True)
class Features:
    items: tuple[Feature, ...]

    def ok(self, name: str) -> bool:
        return next(f.ok for f in self.items if f.name == name)

    @property
    def pidfd(self) -> bool:
        return self.ok("pidfd_open")

    @property
    def sock_diag(self) -> bool:
        return self.ok("sock_diag")

    @property
    def reuseport(self) -> bool:
        return self.ok("SO_REUSEPORT")

    @property
    def missing(self) -> list[Feature]:
        return [f for f in self.items if not f.ok]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: asdict(f) for f in self.items}


def detect() -> Features:
    """Probe every feature now (a few system calls; about a millisecond)."""
    return Features((
        _probe("pidfd_open", "a thread waits for the app", _pidfd),
        _probe("close_range", "CPython closes descriptors one by one", _close_range),
        _probe("sock_diag", "connections counted from /proc/net/tcp", _sock_diag),
        _probe("SO_REUSEPORT", "no hole punching: every connection through the relay", _reuseport),
        _probe("PR_SET_CHILD_SUBREAPER", "an app that daemonizes leaves the agent", _subreaper),
        _probe("splice", "(the relay's; agents do not use it)", _splice),
        _probe("SCM_RIGHTS", "none: boxer cannot hand sockets to the app", _scm_rights),
        _probe("TCP_INFO", "a cut path is seen at the keepalive's timeout", _tcp_info),
        _probe("AF_UNIX", "none: the interposer cannot reach the agent", _family(socket.AF_UNIX)),
        _probe("AF_INET", "none: no network", _family(socket.AF_INET)),
        _probe("AF_INET6", "IPv6 sockets fail as on a kernel without IPv6", _family(socket.AF_INET6)),
        _probe("AF_NETLINK", "see sock_diag", _family(socket.AF_NETLINK, socket.SOCK_DGRAM)),
    ))


@functools.lru_cache(maxsize=1)
def current() -> Features:
    """The features of this process's kernel and sandbox, probed on first use; missing ones
    are logged once with what boxer does instead."""
    features = detect()
    for feature in features.missing:
        log.warning("%s unavailable here (%s): %s", feature.name, feature.detail, feature.fallback)
    return features


# -- boxer probe-lambda ---------------------------------------------------------------------

def _status_fields(*names: str) -> dict[str, str]:
    found = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in names:
                    found[key] = value.strip()
    except OSError:
        pass
    return found


def _limit(which: int) -> list[int | str]:
    return ["unlimited" if v == resource.RLIM_INFINITY else v for v in resource.getrlimit(which)]


def ld_preload_honoured(library: str | None = None) -> dict[str, Any]:
    """Start a child with the interposer preloaded and ask the child whether it is mapped."""
    if library is None:
        from boxer.agent.child import interposer_path

        try:
            library = str(interposer_path())
        except (OSError, RuntimeError) as exc:
            return {"ok": False, "detail": f"no interposer: {exc}"}
    check = ("import sys; maps = open('/proc/self/maps').read(); "
             f"sys.exit(0 if {os.path.basename(library)!r} in maps else 3)")
    # Without BOXER_AGENT_SOCK the interposer loads and passes every call to libc.
    env = {k: v for k, v in os.environ.items() if k != "BOXER_AGENT_SOCK"}
    env["LD_PRELOAD"] = library
    try:
        proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "detail": str(exc)}
    return {"ok": proc.returncode == 0, "library": library,
            "detail": "loaded" if proc.returncode == 0 else f"not loaded ({proc.returncode}): "
                                                             f"{proc.stderr.decode(errors='replace')[-200:]}"}


def probe_lambda_report(nat: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the sandbox we run in allows, and what boxer relies on, as one JSON object."""
    tmp = os.statvfs("/tmp")
    caps = _status_fields("CapEff", "CapBnd", "NoNewPrivs", "Seccomp", "Seccomp_filters")
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "capabilities": {"effective": caps.get("CapEff"), "bounding": caps.get("CapBnd")},
        "no_new_privs": caps.get("NoNewPrivs") == "1",
        "seccomp": {"0": "off", "1": "strict", "2": "filter"}.get(caps.get("Seccomp", ""), caps.get("Seccomp")),
        "limits": {"nofile": _limit(resource.RLIMIT_NOFILE), "nproc": _limit(resource.RLIMIT_NPROC),
                   "as": _limit(resource.RLIMIT_AS)},
        "tmp": {"bytes": tmp.f_blocks * tmp.f_frsize, "free": tmp.f_bavail * tmp.f_frsize,
                "writable": os.access("/tmp", os.W_OK)},
        "root_writable": os.access("/", os.W_OK),
        "features": detect().as_dict(),
        "ld_preload": ld_preload_honoured(),
        "nat": nat,
    }

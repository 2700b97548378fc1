"""Named network namespaces (the `ip netns` convention: a bind mount under /run/netns).

Why not `pyroute2.netns`: it forks a helper process per namespace and per netlink socket, which
is slow for a 400-namespace lab, prints ResourceWarnings from the forked child, and forking a
threaded Python is deprecated. Here every namespace switch happens in a short-lived thread
instead: unshare(2) and setns(2) with CLONE_NEWNET change only the calling thread, so the rest of
the process (and the machine's own namespace) is never touched. A netlink socket opened in such
a thread stays bound to that namespace for its whole life and is handed to pyroute2 by fd.

Careful: pyroute2's `IPRoute()` opens its socket in a thread of its own, so creating an
`IPRoute()` inside a setns'd thread would still talk to the root namespace. Always go through
`netlink_socket()`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(result: int, what: str, name: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} for network namespace {name!r}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread and return its result (or raise its exception).

    The thread ends with `fn`, taking whatever namespace it entered with it."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name="boxer-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _enter(name: str) -> None:
    """setns() the calling thread into namespace `name`. Only ever call from `in_thread`."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        # A guard against the worst mistake this module could make: if `name` were a bind mount
        # of our own namespace (the machine's), everything meant for the lab would land there.
        # /proc/<pid> is the main thread, which never leaves our namespace.
        ours = os.stat(f"/proc/{os.getpid()}/ns/net")
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            raise RuntimeError(f"{netns_path(name)} is our own network namespace; refusing")
        _check(_libc.setns(fd, _CLONE_NEWNET), "setns", name)
    finally:
        os.close(fd)


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount, as iproute2 does, so that namespace bind mounts made
    later propagate into mount namespaces created meanwhile (e.g. by `ip netns exec`)."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        _check(-1, "make /run/netns shared", NETNS_DIR)
    _check(
        _libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", _MS_BIND | _MS_REC, None),
        "bind-mount /run/netns",
        NETNS_DIR,
    )
    _check(
        _libc.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC, None),
        "make /run/netns shared",
        NETNS_DIR,
    )


# Kept as the machine has them in a namespace with a TCP table of its own (the kernel derives
# both from the table's size otherwise): only the table's size is meant to differ.
_TABLE_DERIVED_SYSCTLS = ("net/ipv4/tcp_max_syn_backlog", "net/ipv4/tcp_max_tw_buckets")


def create(names: Iterable[str], tcp_table: int = 0) -> None:
    """Create the named network namespaces (each must not exist yet), loopback down as born.

    `tcp_table`: give each one a TCP socket hash table of that many buckets, as a machine of its
    own has (net.ipv4.tcp_child_ehash_entries), instead of sharing the machine's. Listing the
    sockets of a namespace walks every bucket of its table: ~5 ms on a big host's shared table
    of 262 144, microseconds on a Lambda-sized one. 0, or a kernel before 6.1: shared."""
    _share_netns_dir()
    seed = _table_seed(tcp_table) if tcp_table else None
    derived = {key: _read_proc_sys(key) for key in _TABLE_DERIVED_SYSCTLS} if seed is not None else {}
    try:
        for name in names:
            _create_one(name, seed, derived)
    finally:
        if seed is not None:
            os.close(seed)  # the seed namespace goes with its last reference


def _create_one(name: str, seed: int | None, sysctls: dict[str, str]) -> None:
    path = netns_path(name)
    # O_EXCL: a name that exists means a lab we would clobber, never reuse it silently.
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def body() -> None:
        if seed is not None:
            # A new namespace's table size is read from the namespace its creator is in.
            _check(_libc.setns(seed, _CLONE_NEWNET), "setns into the table seed", name)
        _check(_libc.unshare(_CLONE_NEWNET), "unshare", name)
        _check(
            _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None),
            "bind-mount",
            name,
        )
        for key, value in sysctls.items():
            with open(f"/proc/sys/{key}", "w", encoding="ascii") as f:
                f.write(value)

    try:
        in_thread(body)
    except OSError:
        remove(name)
        raise
    log.debug("created network namespace %s", name)


def _table_seed(buckets: int) -> int | None:
    """An fd of an unnamed namespace whose children get TCP tables of `buckets` buckets; None
    if this kernel cannot do that."""

    def body() -> int | None:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare", "(table seed)")
        try:
            with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "w", encoding="ascii") as f:
                f.write(str(buckets))
        except FileNotFoundError:
            return None
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    seed = in_thread(body)
    if seed is None:
        log.info("this kernel has no net.ipv4.tcp_child_ehash_entries: lab hosts share the machine's TCP table")
    return seed


def _read_proc_sys(key: str) -> str:
    with open(f"/proc/sys/{key}", encoding="ascii") as f:
        return f.read().strip()


def remove(name: str) -> bool:
    """Remove namespace `name`; False if it did not exist. The kernel frees it (and its
    interfaces) once no process is inside any more."""
    path = netns_path(name)
    if not os.path.exists(path):
        return False
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() != errno.EINVAL:
        _check(-1, "umount", name)  # EINVAL: not mounted, a half-created one
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    log.debug("removed network namespace %s", name)
    return True


def list_names(prefix: str = "") -> list[str]:
    """Names of the namespaces under /run/netns that start with `prefix`, sorted."""
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in entries if name.startswith(prefix))


def open_fd(name: str) -> int:
    """An fd for namespace `name` (e.g. for IFLA_NET_NS_FD); the caller closes it."""
    return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)


def netlink_socket(name: str) -> socket.socket:
    """An rtnetlink socket living in namespace `name`."""

    def body() -> socket.socket:
        _enter(name)
        return socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )

    return in_thread(body)


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (e.g. "net/ipv4/ip_forward") inside namespace `name`.
    /proc/sys/net resolves against the calling thread's namespace, hence the thread."""

    def body() -> None:
        _enter(name)
        with open(f"/proc/sys/{key}", "w", encoding="ascii") as f:
            f.write(value)

    in_thread(body)


def read_sysctl(name: str, key: str) -> str:
    """A per-namespace sysctl's value as seen inside namespace `name`."""

    def body() -> str:
        _enter(name)
        with open(f"/proc/sys/{key}", encoding="ascii") as f:
            return f.read().strip()

    return in_thread(body)


def pids_inside(names: Iterable[str]) -> list[int]:
    """Pids of processes whose network namespace is one of `names` (like `ip netns pids`)."""
    inodes = set()
    for name in names:
        try:
            st = os.stat(netns_path(name))
        except FileNotFoundError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    if not inodes:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) in inodes:
            found.append(int(entry))
    return found

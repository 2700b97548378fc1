"""Make chosen system calls fail, with libseccomp (through ctypes: libseccomp2 is part of every
Debian system), to show what boxer does on a kernel or in a sandbox that lacks them.

    flt = SeccompFilter.build(["pidfd_open", "close_range"], families=["netlink"])
    ...                      # after PR_SET_NO_NEW_PRIVS, in the process to restrict:
    flt.load()               # it and every process it starts from now on

A denied system call answers -1 ENOSYS, as on a kernel that does not have it; a denied socket
family answers socket() with EAFNOSUPPORT, as a kernel built without it (or a sandbox that
filters it) does; `reuseport=False` answers setsockopt(SOL_SOCKET, SO_REUSEPORT) with
ENOPROTOOPT, as a kernel before 3.9 did. Build the filter before chroot (the library is loaded
from the host), load it last.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FAMILIES", "SeccompError", "SeccompFilter"]

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
FAMILIES = {"netlink": socket.AF_NETLINK, "unix": socket.AF_UNIX, "inet6": socket.AF_INET6,
            "packet": getattr(socket, "AF_PACKET", 17)}


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompError(RuntimeError):
    pass


@dataclass
class SeccompFilter:
    _lib: ctypes.CDLL
    _ctx: int
    denied: tuple[str, ...]

    @classmethod
    def build(cls, syscalls: Sequence[str] = (), *, families: Sequence[str] = (),
              reuseport: bool = True) -> SeccompFilter:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise SeccompError(f"libseccomp is not installed ({exc}): apt-get install libseccomp2") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not ctx:
            raise SeccompError("seccomp_init failed")
        self = cls(lib, ctx, ())

        def rule(action: int, syscall: str, *cmps: tuple[int, int]) -> None:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number < 0:
                raise SeccompError(f"unknown system call {syscall!r}")
            array = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(a, SCMP_CMP_EQ, v, 0) for a, v in cmps])
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
            if rc < 0:
                raise SeccompError(f"seccomp rule for {syscall}: {errno.errorcode.get(-rc, rc)}")

        for syscall in syscalls:
            rule(_act_errno(errno.ENOSYS), syscall)
        for family in families:
            if family not in FAMILIES:
                raise SeccompError(f"unknown socket family {family!r} (known: {', '.join(FAMILIES)})")
            rule(_act_errno(errno.EAFNOSUPPORT), "socket", (0, FAMILIES[family]))
        if not reuseport:
            rule(_act_errno(errno.ENOPROTOOPT), "setsockopt", (1, socket.SOL_SOCKET), (2, socket.SO_REUSEPORT))
        self.denied = (*syscalls, *(f"socket({f})" for f in families),
                       *(() if reuseport else ("SO_REUSEPORT",)))
        return self

    def load(self) -> None:
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise SeccompError(f"seccomp_load: {errno.errorcode.get(-rc, rc)} (no_new_privs set?)")

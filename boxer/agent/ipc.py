"""The interposer <-> agent wire format (sans-IO).

The interposer (C, preloaded into the application) talks to its agent over a Unix stream socket
whose path is in BOXER_AGENT_SOCK. Every request opens a fresh connection, sends exactly one
request message, reads exactly one reply message (with at most one file descriptor attached by
SCM_RIGHTS), and closes. One connection per request keeps the interposer free of shared state
across threads and fork, which matters more than the ~20 us a Unix connect costs.

Both messages have the same fixed layout, native byte order (both ends are on one machine):

    offset size field
    0      4    magic    0x42580001 ("BX", version 1); anything else is rejected
    4      4    op       Op below (the reply echoes it)
    8      4    status   request: 0; reply: 0 or a positive errno
    12     4    flags    op-specific (see Op)
    16     4    pid      request: the caller's pid; reply: 0
    20     2    family   AF_INET (2) for every address we carry
    22     2    port     host byte order
    24     4    token    op-specific (ACCEPT: the wake connection's source port)
    28     16   addr     IPv4 address in the first 4 bytes, network order
    44     256  name     NUL-terminated UTF-8
    300         (total)

The fixed layout is mirrored in interposer/boxer_proto.h; test_proto_header_matches_ipc in
tests/test_interposer.py compiles the header and checks both agree.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass

# The source address of wake connections (the agent's connection to the app's listener that
# stands for a connection from the overlay): the interposer recognises them by it, and takes its
# copy from BOXER_WAKE_ADDR (interposer/config.c's DEFAULT_WAKE is held to this by a test).
WAKE_ADDR = "127.0.0.2"

MAGIC = 0x42580001
_LAYOUT = struct.Struct("=IIIIiHHI16s256s")
SIZE = _LAYOUT.size
assert SIZE == 300


class Op(enum.IntEnum):
    # Sent once by the interposer's constructor: proves to the agent that the preload is active.
    HELLO = 1
    # name -> overlay address. Reply flags: Resolution.
    RESOLVE = 2
    # overlay address -> name. Reply flags: Resolution.
    REVERSE = 3
    # Connect to addr:port on the overlay. Reply: status 0 + the connected fd attached, with
    # addr:port = the local overlay address and port the app should see (getsockname);
    # or status = ECONNREFUSED / ETIMEDOUT / EHOSTUNREACH / ENETUNREACH.
    CONNECT = 4
    # The app listens on port (the real, kernel-bound port). flags: 1 if bound to the overlay
    # address, 0 if bound to the wildcard address.
    LISTEN = 5
    # The app closed its last listening fd on port.
    UNLISTEN = 6
    # The app accepted a wake connection on listening port `port` whose source port is `token`;
    # reply: status 0 + the real overlay connection's fd, addr:port = the peer's overlay address.
    ACCEPT = 7


class Resolution(enum.IntEnum):
    PASS = 0  # not an overlay name/address: the interposer falls through to libc
    FOUND = 1  # answer is in addr (RESOLVE) or name (REVERSE)
    NONAME = 2  # authoritative "no such host": EAI_NONAME / HOST_NOT_FOUND


class IpcError(Exception):
    """The peer sent something that is not a valid message."""


@dataclass(frozen=True)
class Message:
    op: Op
    status: int = 0
    flags: int = 0
    pid: int = 0
    port: int = 0
    token: int = 0
    addr: str = "0.0.0.0"
    name: str = ""

    def pack(self) -> bytes:
        name = self.name.encode()
        if len(name) > 255:
            raise ValueError(f"name too long for the interposer protocol: {len(name)} bytes > 255")
        return _LAYOUT.pack(
            MAGIC, self.op, self.status, self.flags, self.pid, socket.AF_INET, self.port,
            self.token, ipaddress.IPv4Address(self.addr).packed + bytes(12), name,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Message:
        if len(data) != SIZE:
            raise IpcError(f"message is {len(data)} bytes, expected {SIZE}")
        magic, op, status, flags, pid, family, port, token, addr, name = _LAYOUT.unpack(data)
        if magic != MAGIC:
            raise IpcError(f"bad magic {magic:#x} (interposer and agent from different versions?)")
        try:
            op = Op(op)
        except ValueError:
            raise IpcError(f"unknown op {op}") from None
        if family not in (0, socket.AF_INET):
            raise IpcError(f"unsupported address family {family}")
        if b"\0" not in name:  # the interposer always terminates it; 256 bytes would not pack
            raise IpcError("name is not NUL-terminated within its 256 bytes")
        raw_name = name.split(b"\0", 1)[0]
        try:
            text = raw_name.decode()
        except UnicodeDecodeError:
            raise IpcError("name is not valid UTF-8") from None
        return cls(op=op, status=status, flags=flags, pid=pid, port=port, token=token,
                   addr=str(ipaddress.IPv4Address(addr[:4])), name=text)

    def reply(self, **fields) -> Message:
        """A reply to this request: same op, the given fields."""
        return Message(op=self.op, **fields)

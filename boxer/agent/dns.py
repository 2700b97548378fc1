"""A DNS responder for the overlay names, for programs that send their own DNS queries (dig,
nginx's `resolver`, JVM DNS providers) instead of calling getaddrinfo.

Sans-IO core: `answer(query, names)` turns one query datagram into a response datagram, or
None when the name is not ours (the caller forwards the query unchanged to the host's
resolver). `serve_dns` is the thin asyncio UDP server around it.

Answers, from the agent's NameTable (the same table the interposer's RESOLVE/REVERSE use):

    A     overlay name           -> its overlay address (authoritative, TTL 5 s)
    AAAA  overlay name           -> no data (NOERROR, empty): the overlay is IPv4
    PTR   x.x.x.x.in-addr.arpa   -> the instance's name, for addresses inside the overlay prefix
    any   unknown single label   -> NXDOMAIN (as the interposer's EAI_NONAME)
    other names                  -> not ours: forwarded to the upstream resolver

How the agent should use it (the interposer side is done, see interposer/README.md):
  1. pick a per-instance loopback address, e.g. `loopback_for(overlay_addr)` (127.x.y.z: the
     whole 127/8 is local on Linux, so no address is added and instances on one host differ),
     and `await serve_dns(names, addr, 53, upstream=first_nameserver("/etc/resolv.conf"))`;
  2. write `nameserver <addr>` (plus the original `search`/`options` lines) to a file in its
     work directory and pass its path to the app as BOXER_RESOLV_CONF: the interposer then
     opens that file whenever the app opens /etc/resolv.conf.
Port 53 needs root or CAP_NET_BIND_SERVICE (fine in the lab; on Lambda it is not available,
see docs/compatibility.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct

from boxer.agent.ipc import Resolution
from boxer.agent.names import NameTable

log = logging.getLogger(__name__)

TTL = 5  # seconds: instances come and go
TYPE_A, TYPE_PTR, TYPE_AAAA, TYPE_ANY = 1, 12, 28, 255
CLASS_IN = 1
RCODE_OK, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 2, 3, 4
_HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(Exception):
    """The datagram is not a DNS query we can parse."""


def _parse_question(query: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, name, qtype, qclass, end of question) of a one-question query."""
    if len(query) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(query)
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions")
    labels: list[str] = []
    pos = _HEADER.size
    while True:
        if pos >= len(query):
            raise DnsFormatError("name runs past the end")
        length = query[pos]
        pos += 1
        if length == 0:
            break
        if length & 0xC0:
            raise DnsFormatError("compression pointer in a question")
        label = query[pos:pos + length]
        if len(label) != length:
            raise DnsFormatError("label runs past the end")
        try:
            labels.append(label.decode("ascii").lower())
        except UnicodeDecodeError:
            raise DnsFormatError("non-ASCII label") from None
        pos += length
    if pos + 4 > len(query):
        raise DnsFormatError("question without type and class")
    qtype, qclass = struct.unpack_from("!HH", query, pos)
    return ident, flags, ".".join(labels), qtype, qclass, pos + 4


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"invalid DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _response(query: bytes, ident: int, flags: int, end: int, rcode: int,
              answers: list[tuple[int, bytes]]) -> bytes:
    opcode_rd = flags & 0x7900  # opcode and RD from the query
    out_flags = 0x8000 | opcode_rd | 0x0400 | 0x0080 | rcode  # QR, AA, RA
    header = _HEADER.pack(ident, out_flags, 1, len(answers), 0, 0)
    records = b"".join(struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata
                       for rtype, rdata in answers)
    return header + query[_HEADER.size:end] + records


def _reverse_name_to_addr(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) != 6 or parts[4:] != ["in-addr", "arpa"]:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts[:4]))))
    except ValueError:
        return None


def answer(query: bytes, names: NameTable) -> bytes | None:
    """The response to one query datagram, or None if the name is not ours (forward it).
    Raises DnsFormatError for a datagram that is not a parsable query."""
    ident, flags, name, qtype, qclass, end = _parse_question(query)
    if (flags >> 11) & 0xF != 0:  # only standard queries
        return _response(query, ident, flags, end, RCODE_NOTIMP, [])
    if qclass != CLASS_IN:
        return None
    if name.endswith(".in-addr.arpa"):
        addr = _reverse_name_to_addr(name)
        if addr is None:
            return None
        resolution, host = names.reverse(addr)
        if resolution is Resolution.PASS:
            return None
        if resolution is Resolution.NONAME:
            return _response(query, ident, flags, end, RCODE_NXDOMAIN, [])
        records = [(TYPE_PTR, _encode_name(host))] if qtype in (TYPE_PTR, TYPE_ANY) else []
        return _response(query, ident, flags, end, RCODE_OK, records)
    resolution, addr = names.resolve(name)
    if resolution is Resolution.PASS:
        return None
    if resolution is Resolution.NONAME:
        return _response(query, ident, flags, end, RCODE_NXDOMAIN, [])
    records = []
    if qtype in (TYPE_A, TYPE_ANY):
        records.append((TYPE_A, ipaddress.IPv4Address(addr).packed))
    return _response(query, ident, flags, end, RCODE_OK, records)  # AAAA etc.: no data


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL for a query we could not forward; None if it cannot even be parsed."""
    try:
        ident, flags, _name, _qtype, _qclass, end = _parse_question(query)
    except DnsFormatError:
        return None
    return _response(query, ident, flags, end, RCODE_SERVFAIL, [])


def loopback_for(overlay_addr: str) -> str:
    """A loopback address unique to an overlay address (the low 24 bits under 127/8)."""
    packed = ipaddress.IPv4Address(overlay_addr).packed
    return str(ipaddress.IPv4Address(bytes([127]) + packed[1:]))


def first_nameserver(path: str = "/etc/resolv.conf") -> tuple[str, int] | None:
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1], 53
    except OSError:
        pass
    return None


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, names: NameTable, upstream: tuple[str, int] | None, timeout: float) -> None:
        self.names = names
        self.upstream = upstream
        self.timeout = timeout
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            reply = answer(data, self.names)
        except DnsFormatError as exc:
            log.debug("ignoring a malformed DNS datagram from %s: %s", addr, exc)
            return
        if reply is not None:
            assert self.transport is not None
            self.transport.sendto(reply, addr)
            return
        task = asyncio.ensure_future(self._forward(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, data: bytes, addr) -> None:
        reply = None
        if self.upstream is not None:
            loop = asyncio.get_running_loop()
            got: asyncio.Future[bytes] = loop.create_future()

            class _Once(asyncio.DatagramProtocol):
                def datagram_received(self, d: bytes, _a) -> None:
                    if not got.done():
                        got.set_result(d)

            transport, _ = await loop.create_datagram_endpoint(_Once, remote_addr=self.upstream)
            try:
                transport.sendto(data)
                reply = await asyncio.wait_for(got, self.timeout)
            except (asyncio.TimeoutError, OSError) as exc:
                log.info("upstream resolver %s did not answer: %s", self.upstream, exc)
            finally:
                transport.close()
        if reply is None:
            reply = servfail(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def serve_dns(names: NameTable, host: str, port: int, upstream: tuple[str, int] | None = None,
                    timeout: float = 2.0) -> tuple[asyncio.DatagramTransport, _DnsProtocol]:
    """Serves DNS on host:port (UDP) until the returned transport is closed (call the
    protocol's close() too, to cancel forwards in flight)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(names, upstream, timeout), local_addr=(host, port))
    return transport, protocol

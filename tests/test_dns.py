"""The agent-side DNS responder (boxer/agent/dns.py) and the interposer's /etc/resolv.conf
remap, with the real `dig` (dnsutils) as the client when it is installed."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from boxer.agent import dns
from boxer.agent.names import NameTable

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "boxer" / "libboxer_preload.so"


def table() -> NameTable:
    names = NameTable(ipaddress.IPv4Network("100.64.0.0/10"), "web-1", "100.64.0.3")
    names.update({"kv-1": "100.64.0.7"})
    return names


def query(name: str, qtype: int, ident: int = 0x1234, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + dns._encode_name(name) + struct.pack("!HH", qtype, 1)


def parse(resp: bytes) -> tuple[int, int, int, list[tuple[int, bytes]]]:
    ident, flags, _qd, ancount, _ns, _ar = struct.unpack_from("!HHHHHH", resp)
    pos = 12
    while resp[pos]:
        pos += resp[pos] + 1
    pos += 5
    answers = []
    for _ in range(ancount):
        ptr, rtype, _cls, ttl, rdlen = struct.unpack_from("!HHHIH", resp, pos)
        assert ptr == 0xC00C and ttl == dns.TTL
        pos += 12
        answers.append((rtype, resp[pos:pos + rdlen]))
        pos += rdlen
    assert pos == len(resp)
    return ident, flags, flags & 0xF, answers


def test_a_record_for_an_overlay_name():
    ident, flags, rcode, answers = parse(dns.answer(query("kv-1", dns.TYPE_A), table()))
    assert (ident, rcode) == (0x1234, dns.RCODE_OK)
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD copied
    assert answers == [(dns.TYPE_A, bytes([100, 64, 0, 7]))]


def test_overlay_domain_suffix_and_case():
    _, _, rcode, answers = parse(dns.answer(query("KV-1.boxer", dns.TYPE_A), table()))
    assert rcode == dns.RCODE_OK and answers == [(dns.TYPE_A, bytes([100, 64, 0, 7]))]


def test_aaaa_is_no_data_unknown_single_label_is_nxdomain():
    assert parse(dns.answer(query("kv-1", dns.TYPE_AAAA), table()))[2:] == (dns.RCODE_OK, [])
    assert parse(dns.answer(query("nosuch", dns.TYPE_A), table()))[2:] == (dns.RCODE_NXDOMAIN, [])


def test_ptr_for_overlay_addresses():
    _, _, rcode, answers = parse(dns.answer(query("7.0.64.100.in-addr.arpa", dns.TYPE_PTR), table()))
    assert rcode == dns.RCODE_OK and answers == [(dns.TYPE_PTR, dns._encode_name("kv-1"))]
    assert parse(dns.answer(query("9.9.64.100.in-addr.arpa", dns.TYPE_PTR), table()))[2] == dns.RCODE_NXDOMAIN


def test_other_names_are_forwarded():
    assert dns.answer(query("example.com", dns.TYPE_A), table()) is None
    assert dns.answer(query("1.0.0.127.in-addr.arpa", dns.TYPE_PTR), table()) is None


@pytest.mark.parametrize("data", [b"", b"\0" * 11, query("kv-1", 1)[:-2], query("kv-1", 1, flags=0x8000),
                                  struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\0" + b"\0\1\0\1",
                                  struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1"])
def test_malformed_queries_are_rejected(data):
    with pytest.raises(dns.DnsFormatError):
        dns.answer(data, table())


def test_every_truncation_is_rejected_not_crashing():
    full = query("kv-1.boxer", dns.TYPE_A)
    for n in range(len(full)):
        with pytest.raises(dns.DnsFormatError):
            dns.answer(full[:n], table())


def test_loopback_for_is_unique_per_instance():
    assert dns.loopback_for("100.64.0.7") == "127.64.0.7"
    assert dns.loopback_for("100.127.1.2") == "127.127.1.2"


@pytest.fixture
def server():
    """serve_dns on 127.0.0.1 (ephemeral port) in a background loop, with an upstream that
    never answers (so forwarded queries come back SERVFAIL)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def main() -> None:
        transport, protocol = await dns.serve_dns(table(), "127.0.0.1", 0, upstream=("127.0.0.1", 9), timeout=0.3)
        state.update(transport=transport, protocol=protocol, port=transport.get_extra_info("sockname")[1])
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield state["port"]

    async def stop() -> None:
        state["protocol"].close()  # cancels forwards in flight; their endpoints close
        state["transport"].close()
        await asyncio.sleep(0.05)  # closing completes on the next loop iterations

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (dnsutils)")
def test_dig_through_the_remapped_resolv_conf(server, tmp_path):
    if not LIB.exists():
        pytest.skip(f"{LIB} missing: run `pip install -e .`")
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXER_")}
    env.update(LD_PRELOAD=str(LIB), BOXER_RESOLV_CONF=str(conf))

    def dig(*args: str) -> str:
        r = subprocess.run(["dig", "-p", str(server), "+short", "+tries=1", "+time=2", *args], env=env,
                           capture_output=True, text=True, timeout=20, check=False)
        return r.stdout.strip()

    # No server named on the command line: dig found ours only through /etc/resolv.conf.
    assert dig("kv-1") == "100.64.0.7"
    assert dig("-x", "100.64.0.7") == "kv-1."
    assert dig("kv-1", "AAAA") == ""
    r = subprocess.run(["dig", "-p", str(server), "+tries=1", "+time=2", "nosuch"], env=env,
                       capture_output=True, text=True, timeout=20, check=False)
    assert "status: NXDOMAIN" in r.stdout
    r = subprocess.run(["dig", "-p", str(server), "+tries=1", "+time=3", "example.com"], env=env,
                       capture_output=True, text=True, timeout=20, check=False)
    assert "status: SERVFAIL" in r.stdout  # forwarded, upstream silent
    # Without the variable the real file is read (whatever it names, not our server).
    env.pop("BOXER_RESOLV_CONF")
    r = subprocess.run(["dig", "-p", str(server), "+tries=1", "+time=1", "kv-1"], env=env,
                       capture_output=True, text=True, timeout=20, check=False)
    assert "100.64.0.7" not in r.stdout

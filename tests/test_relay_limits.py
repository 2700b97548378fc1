"""The relay port's bounds, hit over loopback sockets: each refused and counted, and the relay
serving on (nat_traversal/relay.py, limits.RelayLimits)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import textwrap
import time

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.limits import RelayLimits
from boxer.nat_traversal.relay import RelayServer
from boxer.nat_traversal.wire import FrameDecoder, encode_frame

SECRET = bytes(range(32))


SALT = "5a170001"  # the coordinator's, in the connection's Punch


def relay_frame(conn: str, role: str, salt: str = SALT, key: bytes | None = None) -> bytes:
    """A Relay frame as an agent makes it: keyed by the connection's key from its Punch (by
    default the real one, HMAC(secret, conn, salt), which the relay derives)."""
    key = auth.connection_key(SECRET, conn, salt) if key is None else key
    return encode_frame(m.Relay(v=m.PROTOCOL_VERSION, conn=conn, salt=salt, role=role,
                                mac=auth.relay_proof(key, conn, salt, role)).to_wire())


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within `timeout`, reading and dropping any data."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while (remaining := deadline - loop.time()) > 0:
            if not await asyncio.wait_for(loop.sock_recv(sock, 65536), remaining):
                return True
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        pass
    return False


def run(scenario, **limits):
    async def main():
        relay = RelayServer(SECRET, RelayLimits(**limits))
        port = await relay.start("127.0.0.1", 0)
        try:
            return await scenario(relay, port)
        finally:
            relay.close()
    return asyncio.run(main())


def test_a_connection_without_a_first_frame_is_closed_at_the_deadline():
    async def scenario(relay, port):
        idle = await connect(port)
        t0 = time.monotonic()
        assert await closed_within(idle, 3.0)
        assert 0.25 < time.monotonic() - t0 < 2.0
        idle.close()
        return relay.refusals["relay-first-frame"]
    assert run(scenario, first_frame=0.3) == 1


def test_unauthenticated_connections_from_one_address_are_capped():
    async def scenario(relay, port):
        held = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        extra = await connect(port)
        assert await closed_within(extra, 1.0)  # closed at once, the others still open
        assert relay.unauthenticated == 3
        for sock in [*held, extra]:
            sock.close()
        return relay.refusals["relay-unauthenticated-per-source"]
    assert run(scenario, unauthenticated_per_source=3) == 1


def test_past_the_global_cap_the_oldest_connection_makes_room():
    async def scenario(relay, port):
        held = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        newest = await connect(port)
        assert await closed_within(held[0], 1.0)
        assert not await closed_within(newest, 0.2)
        for sock in [*held, newest]:
            sock.close()
        return relay.refusals["relay-unauthenticated"]
    assert run(scenario, unauthenticated=3) == 1


def test_a_probe_asking_for_a_second_answer_after_too_long_gets_one_answer():
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        sock = await connect(port)
        await loop.sock_sendall(sock, encode_frame(m.Probe(v=m.PROTOCOL_VERSION, again_after=3600).to_wire()))
        decoder = FrameDecoder()
        decoder.receive_data(await asyncio.wait_for(loop.sock_recv(sock, 4096), 2.0))
        assert m.decode(decoder.next_frame()).TYPE == "observed"
        assert await closed_within(sock, 2.0)  # and not held for an hour
        sock.close()
        return relay.refusals["relay-probe-again-after"]
    assert run(scenario, probe_again_after=60) == 1


def test_waiting_probes_per_address_are_capped():
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        socks = []
        for _ in range(3):
            sock = await connect(port)
            await loop.sock_sendall(sock, encode_frame(m.Probe(v=m.PROTOCOL_VERSION, again_after=30).to_wire()))
            socks.append(sock)
        await asyncio.sleep(0.3)
        assert await closed_within(socks[2], 2.0)  # the third waits for nothing
        assert not await closed_within(socks[0], 0.2)
        for sock in socks:
            sock.close()
        return relay.refusals["relay-probes-waiting"]
    assert run(scenario, probes_waiting_per_source=2) == 1


async def _pair(port: int, conn: str) -> tuple[socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    client, server = await connect(port), await connect(port)
    await loop.sock_sendall(client, relay_frame(conn, "client"))
    await loop.sock_sendall(server, relay_frame(conn, "server"))
    await loop.sock_sendall(client, b"ping")
    assert await asyncio.wait_for(loop.sock_recv(server, 4), 2.0) == b"ping"
    return client, server


def test_a_replayed_relay_proof_is_refused():
    """A captured Relay frame, sent again (from anywhere), pairs with nothing: it is closed."""
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        client, server = await _pair(port, "c0ffee01")
        replay = await connect(port)
        await loop.sock_sendall(replay, relay_frame("c0ffee01", "client"))
        assert await closed_within(replay, 2.0)
        await loop.sock_sendall(server, b"pong")  # the real pair carries on
        assert await asyncio.wait_for(loop.sock_recv(client, 4), 2.0) == b"pong"
        for sock in (client, server, replay):
            sock.close()
        return relay.refusals["relay-replay"]
    assert run(scenario) == 1


def test_a_relay_proof_keyed_by_another_connections_key_is_refused():
    """An agent holds the keys of its own connections only: a proof for connection c0ffee01
    made with c0ffee02's key (or the key of the same id under another salt, which an insider
    gets by sending a Connect with an id it saw) is closed and counted; the real one pairs."""
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        forged = []
        for key in (auth.connection_key(SECRET, "c0ffee02", SALT), auth.connection_key(SECRET, "c0ffee01", "5a17ffff"),
                    SECRET):
            sock = await connect(port)
            await loop.sock_sendall(sock, relay_frame("c0ffee01", "server", key=key))
            assert await closed_within(sock, 2.0)
            forged.append(sock)
        client, server = await _pair(port, "c0ffee01")  # the real halves still pair
        for sock in (*forged, client, server):
            sock.close()
        return relay.refusals["relay-proof"]
    assert run(scenario) == 3


def test_halves_of_one_connection_id_under_two_salts_never_join():
    """The insider's own connect with a victim's connection id (another salt, its own valid key)
    waits alone: it is not paired with the victim's half."""
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        victim, insider = await connect(port), await connect(port)
        await loop.sock_sendall(victim, relay_frame("c0ffee01", "client"))
        await loop.sock_sendall(insider, relay_frame("c0ffee01", "server", salt="5a17ffff"))
        await loop.sock_sendall(victim, b"ping")
        with contextlib.suppress(asyncio.TimeoutError):
            assert await asyncio.wait_for(loop.sock_recv(insider, 4), 0.5) != b"ping"
        for sock in (victim, insider):
            sock.close()
        return relay.stats.total
    assert run(scenario) == 0


def test_relayed_pairs_are_capped():
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        pair = await _pair(port, "c0ffee01")
        third = await connect(port)
        await loop.sock_sendall(third, relay_frame("c0ffee02", "client"))
        assert await closed_within(third, 2.0)
        for sock in (*pair, third):
            sock.close()
        return relay.refusals["relay-pairs"]
    assert run(scenario, pairs=1) == 1


def test_an_idle_relayed_connection_is_closed():
    async def scenario(relay, port):
        client, server = await _pair(port, "c0ffee01")
        t0 = time.monotonic()
        assert await closed_within(client, 5.0)
        idle_for = time.monotonic() - t0
        assert await closed_within(server, 1.0)
        client.close()
        server.close()
        await asyncio.sleep(0.1)
        return idle_for, relay.refusals["relay-pair-idle"], relay.stats.active
    idle_for, refused, active = run(scenario, pair_idle=0.5)
    assert 0.4 < idle_for < 2.5 and refused == 1 and active == 0


def test_a_relayed_connection_past_its_byte_limit_is_closed():
    async def scenario(relay, port):
        loop = asyncio.get_running_loop()
        client, server = await _pair(port, "c0ffee01")
        try:
            await asyncio.wait_for(loop.sock_sendall(client, b"x" * 200_000), 2.0)
        except (OSError, asyncio.TimeoutError):
            pass
        assert await closed_within(server, 3.0)
        client.close()
        server.close()
        return relay.refusals["relay-pair-bytes"]
    assert run(scenario, pair_bytes=100_000) == 1


def test_the_accept_loop_survives_running_out_of_descriptors():
    """Before, the relay's accept loop died on its first EMFILE and never accepted again."""
    script = textwrap.dedent("""
        import asyncio, resource, socket, sys
        from boxer.nat_traversal.limits import RelayLimits
        from boxer.nat_traversal.relay import RelayServer
        from boxer.nat_traversal import messages as m
        from boxer.nat_traversal.wire import encode_frame

        async def main():
            relay = RelayServer(b"s" * 32, RelayLimits(first_frame=1.0))
            port = await relay.start("127.0.0.1", 0)
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            loop = asyncio.get_running_loop()
            held = []
            try:  # until this process has no descriptor left; the relay's accepts fail meanwhile
                while True:
                    s = socket.socket(); s.setblocking(False)
                    held.append(s)
                    await loop.sock_connect(s, ("127.0.0.1", port))
            except OSError:
                pass
            await asyncio.sleep(0.5)
            for s in held:
                s.close()
            await asyncio.sleep(1.5)  # the relay's first-frame deadline frees what it accepted
            probe = socket.socket(); probe.setblocking(False)
            await loop.sock_connect(probe, ("127.0.0.1", port))
            await loop.sock_sendall(probe, encode_frame(m.Probe(v=m.PROTOCOL_VERSION).to_wire()))
            answer = await asyncio.wait_for(loop.sock_recv(probe, 4096), 3.0)
            print("answered" if b"observed" in answer else "no answer", relay.refusals["relay-accept"])

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answered, accept_failures = proc.stdout.split()
    assert answered == "answered"
    assert int(accept_failures) >= 1, "the test never ran the relay out of descriptors"

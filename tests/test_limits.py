"""Every bound of the coordinator's tables (nat_traversal/limits.py), hit, refused, counted, and
the service going on. Sans-IO: the broker is driven without sockets and with a virtual clock."""

from __future__ import annotations

import pytest
from test_broker import observe, register, sent, tokens

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Close, Timeouts
from boxer.nat_traversal.limits import Limits, RelayLimits, with_overrides

SECRET = bytes(range(32))


def make(**limits) -> Broker:
    return Broker(SECRET, prefix="100.64.0.0/24", timeouts=Timeouts(broker=3.0), new_token=tokens(),
                  limits=Limits(**limits))


def closes(actions) -> list[int]:
    return [a.cid for a in actions if isinstance(a, Close)]


# --- the public port: unauthenticated connections --------------------------------------------------

def test_a_connection_without_a_first_frame_is_closed_at_the_deadline():
    broker = make(first_frame=5.0)
    broker.connection_made(1, "198.18.1.9:1000", now=0.0)
    register(broker, 2, "kv")  # authenticated at 0.0: no deadline applies to it
    broker.connection_made(3, "198.18.1.9:1001", now=2.0)
    assert closes(broker.expire(5.0)) == []
    assert closes(broker.expire(5.1)) == [1]
    assert closes(broker.expire(7.1)) == [3]
    assert broker.refusals["first-frame-deadline"] == 2
    assert broker.unauthenticated_count == 0
    assert broker.members() == {"kv": "100.64.0.1"}
    assert broker.connection_lost(1) == []  # the I/O layer's report of the close finds nothing


def test_unauthenticated_connections_from_one_address_are_capped():
    broker = make(unauthenticated_per_source=2)
    for cid in (1, 2):
        assert isinstance(sent(broker.connection_made(cid, f"198.18.1.9:{1000 + cid}"))[0], m.Challenge)
    assert broker.connection_made(3, "198.18.1.9:1003") == [
        Close(3, "too many unauthenticated connections from this address")]
    assert broker.refusals["unauthenticated-per-source"] == 1
    # Another address is served; and once one of the first two authenticates, its slot is free.
    register(broker, 4, "web", "198.18.1.10:1000")
    broker.connection_lost(1)
    assert isinstance(sent(broker.connection_made(5, "198.18.1.9:1005"))[0], m.Challenge)


def test_past_the_global_cap_the_oldest_unauthenticated_connection_makes_room():
    broker = make(unauthenticated=3)
    for cid in (1, 2, 3):
        broker.connection_made(cid, f"198.18.2.{cid}:1000")
    actions = broker.connection_made(4, "198.18.1.1:40000")
    assert closes(actions) == [1] and isinstance(sent(actions)[0], m.Challenge)
    assert broker.refusals["unauthenticated"] == 1 and broker.unauthenticated_count == 3
    # The newcomer (an agent) logs in: the flood delayed it by nothing.
    challenge = sent(actions)[0]
    nonce = "ab" * 16
    welcome = sent(broker.message_received(4, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(
        SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0))[0]
    assert isinstance(welcome, m.Welcome) and broker.unauthenticated_count == 2


# --- services ------------------------------------------------------------------------------------

def _controller(broker: Broker, cid: int = 9) -> None:
    from test_broker import login
    login(broker, cid)
    broker.message_received(cid, m.Watch(), 0.0)


def test_declared_services_are_capped_and_the_refusal_names_the_option():
    broker = make(services=2)
    _controller(broker)
    errors = sent(broker.message_received(9, m.Declare(services={"a": 1, "b": 1, "c": 1}), 0.0), 9)
    assert errors == [m.Error(ref="declare", reason="service 'c' refused: the coordinator holds its limit of 2 "
                                                    "services (--limit services=N) (1 service(s) not declared)")]
    assert sorted(broker.services.vips()) == ["a", "b"]
    assert broker.refusals["services"] == 1


def test_an_instance_of_a_service_past_the_cap_is_refused_and_others_register():
    broker = make(services=1)
    from test_broker import login
    login(broker, 1)
    broker.message_received(1, m.Register(name="web-1", service="web", instance="12345678"), 0.0)
    login(broker, 2)
    error = sent(broker.message_received(2, m.Register(name="kv-1", service="kv", instance="12345679"), 0.0), 2)
    assert error[0].reason.startswith("service 'kv' refused")
    login(broker, 3)
    ok = sent(broker.message_received(3, m.Register(name="web-2", service="web", instance="1234567a"), 0.0), 3)
    assert isinstance(ok[0], m.Registered)


def test_service_addresses_never_leave_the_prefix():
    broker = Broker(SECRET, prefix="100.64.0.0/29", new_token=tokens())  # 6 usable addresses
    _controller(broker)
    broker.message_received(9, m.Declare(services={f"s{i}": 0 for i in range(10)}), 0.0)
    import ipaddress
    network = ipaddress.IPv4Network("100.64.0.0/29")
    vips = broker.services.vips()
    assert len(vips) == 6  # .1 .. .6: the network and broadcast addresses are nobody's
    assert all(ipaddress.IPv4Address(v) in network and v not in ("100.64.0.0", "100.64.0.7") for v in vips.values())


def test_a_full_prefix_refuses_a_registration_with_a_clear_error():
    broker = Broker(SECRET, prefix="100.64.0.0/30", new_token=tokens())  # 2 usable addresses
    from test_broker import login
    for cid, name in ((1, "a"), (2, "b"), (3, "c")):
        login(broker, cid)
        reply = sent(broker.message_received(cid, m.Register(name=name, service=name, instance=f"{cid:08x}"), 0.0),
                     cid)[0]
    assert reply == m.Error(ref="register", reason="the overlay prefix 100.64.0.0/30 has no free address left: "
                                                   "give the coordinator a larger --prefix")


# --- connects and tickets per session ---------------------------------------------------------------

def _held_setup(broker: Broker):
    _controller(broker)
    broker.message_received(9, m.Declare(services={"api": 30}), 0.0)
    session, _ = register(broker, 1, "web")
    return session, broker.services.get("api").vip


def test_held_connects_per_session_are_capped():
    broker = make(held_per_session=2)
    session, vip = _held_setup(broker)
    for i in range(3):
        observe(broker, 20 + i, session, f"aaaa000{i}", f"198.18.1.1:5000{i}")
    results = [sent(broker.message_received(1, m.Connect(conn=f"c0ffee0{i}", dst_addr=vip, dst_port=80,
                                                         src_port=5000, ticket=f"aaaa000{i}"), 0.0), 1)
               for i in range(3)]
    assert results[:2] == [[], []]  # held (the controller hears the demand)
    assert results[2] == [m.ConnectFailed(conn="c0ffee02", error="ECONNREFUSED")]
    assert broker.held_count == 2 and broker.refusals["held-per-session"] == 1


def test_one_ticket_backs_one_connect():
    """Before: 20 000 held connects on one ticket, each scanning the others (6.7 s of CPU)."""
    broker = make()
    session, vip = _held_setup(broker)
    observe(broker, 20, session, "aaaa0001", "198.18.1.1:50001")
    broker.message_received(1, m.Connect(conn="c0ffee01", dst_addr=vip, dst_port=80, src_port=5000,
                                         ticket="aaaa0001"), 0.0)
    again = sent(broker.message_received(1, m.Connect(conn="c0ffee02", dst_addr=vip, dst_port=80, src_port=5000,
                                                      ticket="aaaa0001"), 0.0), 1)
    assert again == [m.Error(ref="c0ffee02", reason="ticket already in use by another connect")]
    # Once the held connect times out, the ticket is free again.
    broker.expire(31.0)
    assert broker.held_count == 0
    freed = sent(broker.message_received(1, m.Connect(conn="c0ffee03", dst_addr=vip, dst_port=80, src_port=5000,
                                                      ticket="aaaa0001"), 31.0), 1)
    assert freed == []


def test_pending_connects_per_session_are_capped():
    broker = make(pending_per_session=1)
    session_a, _ = register(broker, 1, "web", "198.18.1.1:40000")
    _, addr_b = register(broker, 2, "kv", "198.18.1.2:40000")
    observe(broker, 11, session_a, "aaaa0001", "198.18.1.1:50001")
    observe(broker, 12, session_a, "aaaa0002", "198.18.1.1:50002")
    first = broker.message_received(1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=80, src_port=1,
                                                 ticket="aaaa0001"), 0.0)
    assert isinstance(sent(first, 2)[0], m.Incoming)
    second = sent(broker.message_received(1, m.Connect(conn="c0ffee02", dst_addr=addr_b, dst_port=80, src_port=1,
                                                       ticket="aaaa0002"), 0.0), 1)
    assert second == [m.ConnectFailed(conn="c0ffee02", error="ECONNREFUSED")]
    assert broker.refusals["pending-per-session"] == 1
    broker.message_received(2, m.Refuse(conn="c0ffee01", error="ECONNREFUSED"), 0.1)  # the first ends
    third = broker.message_received(1, m.Connect(conn="c0ffee03", dst_addr=addr_b, dst_port=80, src_port=1,
                                                 ticket="aaaa0002"), 0.2)
    assert isinstance(sent(third, 2)[0], m.Incoming)


def test_tickets_per_session_are_capped():
    broker = make(tickets_per_session=2)
    session, _ = register(broker, 1, "web")
    assert observe(broker, 11, session, "aaaa0001", "198.18.1.1:50001") == m.Observed(endpoint="198.18.1.1:50001")
    observe(broker, 12, session, "aaaa0002", "198.18.1.1:50002")
    refused = observe(broker, 13, session, "aaaa0003", "198.18.1.1:50003")
    assert refused == m.Refused(reason="rendezvous refused: the session holds 2 tickets already")
    assert broker.refusals["tickets-per-session"] == 1
    broker.connection_lost(11)  # a ticket's connection closes: room for another
    assert isinstance(observe(broker, 14, session, "aaaa0004", "198.18.1.1:50004"), m.Observed)


# --- configuration ---------------------------------------------------------------------------------

def test_limits_are_set_by_name_and_a_typo_gets_a_suggestion():
    limits, relay = with_overrides(Limits(), RelayLimits(), ["services=10", "relay.pair-idle=2.5", "first-frame=1"])
    assert (limits.services, limits.first_frame, relay.pair_idle) == (10, 1.0, 2.5)
    with pytest.raises(ValueError, match=r"did you mean held-per-session\?"):
        with_overrides(Limits(), RelayLimits(), ["held-per-sesion=3"])
    with pytest.raises(ValueError, match="must be positive"):
        with_overrides(Limits(), RelayLimits(), ["relay.pairs=0"])


def test_refusals_reach_the_metrics():
    from boxer.nat_traversal.metrics import render

    broker = make(unauthenticated_per_source=1)
    broker.connection_made(1, "198.18.1.9:1")
    broker.connection_made(2, "198.18.1.9:2")
    text = render(broker, None)
    assert 'boxer_refusals_total{kind="unauthenticated-per-source"} 1' in text
    assert "boxer_coordinator_unauthenticated 1" in text


def test_a_refusal_flood_logs_one_line_per_kind_per_interval(caplog):
    from boxer.nat_traversal.limits import Refusals

    refusals = Refusals(quiet=10.0)
    with caplog.at_level("WARNING"):
        for i in range(1000):
            refusals.refuse("x", i * 0.001, "why")
        refusals.refuse("x", 11.0, "why")
    assert refusals["x"] == 1001
    lines = [r.getMessage() for r in caplog.records if "refused (x)" in r.getMessage()]
    assert lines == ["refused (x): why", "refused (x): why (and 999 more like it since)"]



# --- the I/O layer: a peer that does not read is dropped -----------------------------------------

def test_a_peer_that_never_reads_is_dropped_and_the_others_are_served():
    """Before: 300 000 Pings never read made the coordinator buffer 4.6 MB, and growing."""
    import asyncio
    import socket

    from boxer.nat_traversal.coordinator import CoordinatorServer, _PeerProtocol
    from boxer.nat_traversal.wire import FrameDecoder, encode_frame

    async def handshake(loop, sock) -> None:
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            decoder.receive_data(await loop.sock_recv(sock, 4096))
        challenge = m.decode(frame)
        nonce = "ab" * 16
        await loop.sock_sendall(sock, encode_frame(m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(
            SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)).to_wire()))

    async def scenario():
        loop = asyncio.get_running_loop()
        server = CoordinatorServer(Broker(SECRET, new_token=tokens(), limits=Limits(write_buffer=64 * 1024,
                                                                                     write_stall=0.5)))
        class SmallKernelBuffers(_PeerProtocol):  # so the transport's own buffer fills in a moment
            def connection_made(self, transport) -> None:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                super().connection_made(transport)

        listener = await loop.create_server(lambda: SmallKernelBuffers(server), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        expirer = asyncio.create_task(server.expire_forever())
        mute = socket.socket()
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        mute.setblocking(False)
        await loop.sock_connect(mute, ("127.0.0.1", port))
        await handshake(loop, mute)
        pings = b"".join(encode_frame(m.Ping(seq=i).to_wire()) for i in range(2000))
        t0 = loop.time()
        dropped = False
        while loop.time() - t0 < 20 and not dropped:
            try:
                await asyncio.wait_for(loop.sock_sendall(mute, pings), 1.0)
            except (OSError, asyncio.TimeoutError):
                dropped = True  # it stopped taking our Pings: reset, or its buffers are full
            await asyncio.sleep(0)
            dropped = dropped or server.broker.refusals["slow-reader"] > 0
        await asyncio.sleep(0.5)
        other = socket.socket()
        other.setblocking(False)
        await loop.sock_connect(other, ("127.0.0.1", port))
        await handshake(loop, other)  # a new peer is still served
        welcome = await asyncio.wait_for(loop.sock_recv(other, 4096), 2.0)
        buffered = [p.transport.get_write_buffer_size() for p in server.peers.values()]
        for sock in (mute, other):
            sock.close()
        listener.close()
        expirer.cancel()
        return server.broker.refusals["slow-reader"], buffered, welcome

    refused, buffered, welcome = asyncio.run(scenario())
    assert refused == 1
    assert buffered == [0]  # only the new peer is left, and what it was sent went out
    assert b"welcome" in welcome

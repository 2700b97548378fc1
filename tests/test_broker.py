"""The coordinator's protocol logic, driven without sockets and with a virtual clock."""

from __future__ import annotations

import itertools

import pytest

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Close, Send, Timeouts

SECRET = bytes(range(32))


def tokens():
    counter = itertools.count(1)
    return lambda: f"{next(counter):032x}"


@pytest.fixture
def broker() -> Broker:
    return Broker(SECRET, prefix="100.64.0.0/24", timeouts=Timeouts(broker=3.0), new_token=tokens())


def sent(actions, cid=None):
    return [a.message for a in actions if isinstance(a, Send) and (cid is None or a.cid == cid)]


def login(broker: Broker, cid: int, endpoint: str = "198.18.1.1:40000") -> str:
    challenge = sent(broker.connection_made(cid, endpoint))[0]
    nonce = "ab" * 16
    welcome = sent(broker.message_received(
        cid, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0))[0]
    assert isinstance(welcome, m.Welcome)
    assert welcome.mac == auth.mac(SECRET, auth.COORDINATOR_PROOF, nonce, challenge.nonce)
    return welcome.session


def register(broker: Broker, cid: int, name: str, endpoint: str = "198.18.1.1:40000") -> tuple[str, str]:
    """Registers, then ends the coordinator's turn (flush_members), as the real one would."""
    session = login(broker, cid, endpoint)
    replies = sent(broker.message_received(cid, m.Register(name=name, service=name, instance="12345678"), 0.0), cid)
    registered = next(r for r in replies if isinstance(r, m.Registered))
    broker.flush_members()
    return session, registered.addr


def observe(broker: Broker, cid: int, session: str, ticket: str, endpoint: str) -> m.Message:
    challenge = sent(broker.connection_made(cid, endpoint))[0]
    return sent(broker.message_received(
        cid, m.Observe(v=m.PROTOCOL_VERSION, session=session, ticket=ticket,
                       mac=auth.mac(SECRET, auth.OBSERVE_PROOF, challenge.nonce, session, ticket)), 0.0))[0]


def test_wrong_secret_is_refused_and_closed(broker):
    challenge = sent(broker.connection_made(1, "198.18.1.9:1234"))[0]
    nonce = "cd" * 16
    actions = broker.message_received(
        1, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(b"x" * 32, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0)
    assert sent(actions) == [m.Refused(reason="authentication failed: wrong deployment secret")]
    assert actions[-1] == Close(1, "authentication failed: wrong deployment secret")
    assert broker.instances == []


def test_unauthenticated_peer_cannot_register(broker):
    broker.connection_made(1, "198.18.1.9:1234")
    actions = broker.message_received(1, m.Register(name="kv", service="kv", instance="12345678"), 0.0)
    assert isinstance(sent(actions)[0], m.Refused)
    assert isinstance(actions[-1], Close)
    assert broker.members() == {}


def test_old_protocol_version_is_refused_with_both_versions(broker):
    broker.connection_made(1, "198.18.1.9:1234")
    refused = sent(broker.message_received(1, m.Auth(v=7, nonce="ab" * 16, mac="00" * 32), 0.0))[0]
    assert "version 7" in refused.reason and f"speaks {m.PROTOCOL_VERSION}" in refused.reason


@pytest.mark.parametrize("old", [4, 5])
def test_an_agent_of_protocol_4_or_5_is_refused_by_name(broker, old):
    """Protocol 5 took the secret from the agents; protocol 6 wraps the connection key of Punch
    and Incoming for its receiver, which a version 5 agent would take for the key itself (every
    proof of its connections failing, unexplained): an older agent (or coordinator) is told so
    in one line, never half served."""
    assert m.PROTOCOL_VERSION == 6
    broker.connection_made(1, "198.18.1.9:1234")
    refused = sent(broker.message_received(1, m.Auth(v=old, nonce="ab" * 16, mac="00" * 32), 0.0))[0]
    assert refused == m.Refused(reason=f"protocol version {old} not supported (coordinator speaks 6): upgrade "
                                       "boxer on both sides")


def test_registration_allocates_addresses_then_the_turn_ends_with_members(broker):
    register(broker, 1, "kv")
    login(broker, 2)
    replies = broker.message_received(2, m.Register(name="web", service="web", instance="12345678"), 0.0)
    assert replies == [Send(2, m.Registered(name="web", addr="100.64.0.2", prefix="100.64.0.0/24",
                                            beat=Timeouts().beat))]
    assert broker.members_due
    assert broker.flush_members() == [
        Send(1, m.MembersDelta(base=1, version=2, hosts={"web": "100.64.0.2"}, gone=[])),
        Send(2, m.Members(hosts={"kv": "100.64.0.1", "web": "100.64.0.2"}, version=2)),
    ]
    assert not broker.members_due and broker.flush_members() == []


def test_duplicate_name_is_an_error_naming_the_holder(broker):
    register(broker, 1, "kv")
    login(broker, 2)
    error = sent(broker.message_received(2, m.Register(name="kv", service="kv", instance="87654321"), 0.0))[0]
    assert isinstance(error, m.Error) and "taken by a running instance (100.64.0.1)" in error.reason


def test_reregistration_keeps_the_address_after_a_coordinator_restart(broker):
    login(broker, 1)
    reply = sent(broker.message_received(
        1, m.Register(name="kv", service="kv", instance="12345678", addr="100.64.0.77"), 0.0), 1)[0]
    assert reply.addr == "100.64.0.77"


def test_connection_lost_deregisters_and_tells_the_others(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    assert broker.connection_lost(1) == []
    assert broker.flush_members() == [Send(2, m.MembersDelta(base=2, version=3, hosts={}, gone=["kv"]))]


# --- membership: full Members once, then one delta per turn ----------------------------------------

def test_registrations_in_one_turn_reach_each_receiver_as_one_frame(broker):
    register(broker, 1, "kv")
    for cid, name in ((2, "web-1"), (3, "web-2"), (4, "web-3")):
        login(broker, cid)
        broker.message_received(cid, m.Register(name=name, service="web", instance=f"{cid:08x}"), 0.0)
    actions = broker.flush_members()
    delta = m.MembersDelta(base=1, version=2, hosts={"web-1": "100.64.0.2", "web-2": "100.64.0.3",
                                                     "web-3": "100.64.0.4"},
                           gone=[], services={"web": "100.64.0.254"})
    full = m.Members(hosts={"kv": "100.64.0.1", "web-1": "100.64.0.2", "web-2": "100.64.0.3",
                            "web-3": "100.64.0.4"}, version=2, services={"web": "100.64.0.254"})
    assert actions == [Send(1, delta), Send(2, full), Send(3, full), Send(4, full)]
    assert sent(actions, 2)[0] is sent(actions, 3)[0]  # built once: the coordinator encodes it once


def test_a_name_that_leaves_and_returns_at_the_same_address_in_one_turn_is_no_change(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    login(broker, 3, "198.18.1.1:40001")
    broker.message_received(3, m.Register(name="kv", service="kv", instance="12345678", addr="100.64.0.1"), 1.0)
    assert broker.flush_members() == [Send(3, m.Members(hosts={"web": "100.64.0.2", "kv": "100.64.0.1"}, version=2))]


def test_an_instance_that_moved_is_sent_with_its_new_address(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    broker.connection_lost(1)
    login(broker, 3)
    broker.message_received(3, m.Register(name="kv", service="kv", instance="87654321", addr="100.64.0.9"), 1.0)
    assert sent(broker.flush_members(), 2) == [m.MembersDelta(base=2, version=3, hosts={"kv": "100.64.0.9"}, gone=[])]


def test_a_watcher_gets_the_full_members_then_deltas(broker):
    register(broker, 1, "kv")
    assert watch(broker, 9)[0].TYPE == "snapshot"
    assert broker.flush_members() == [Send(9, m.Members(hosts={"kv": "100.64.0.1"}, version=1))]
    register(broker, 2, "web")
    login(broker, 3)
    broker.message_received(3, m.Bye(reason="done"), 0.0)  # not registered: no change
    assert broker.flush_members() == []
    broker.message_received(2, m.Bye(reason="done"), 0.0)
    assert sent(broker.flush_members(), 9) == [m.MembersDelta(base=2, version=3, hosts={}, gone=["web"])]


def test_resync_gets_the_full_members_at_the_current_version(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    assert broker.message_received(1, m.Resync(), 1.0) == []
    assert broker.flush_members() == [Send(1, m.Members(hosts={"kv": "100.64.0.1", "web": "100.64.0.2"}, version=2))]
    register(broker, 3, "db")
    assert sent(broker.flush_members(), 1) == []  # register() flushed: both got the same delta
    broker.connection_lost(3)
    assert broker.flush_members() == [
        Send(1, m.MembersDelta(base=3, version=4, hosts={}, gone=["db"])),
        Send(2, m.MembersDelta(base=3, version=4, hosts={}, gone=["db"])),
    ]


def test_resync_from_a_session_that_holds_no_membership_is_ignored(broker):
    login(broker, 1)
    assert broker.message_received(1, m.Resync(), 0.0) == []
    assert not broker.members_due


def test_full_snapshot_mode_sends_the_whole_membership_to_everyone():
    broker = Broker(SECRET, prefix="100.64.0.0/24", new_token=tokens(), full_snapshots=True)
    register(broker, 1, "kv")
    login(broker, 2)
    broker.message_received(2, m.Register(name="web", service="web", instance="12345678"), 0.0)
    full = m.Members(hosts={"kv": "100.64.0.1", "web": "100.64.0.2"}, version=2)
    assert broker.flush_members() == [Send(1, full), Send(2, full)]


def test_deltas_applied_in_order_rebuild_the_membership(broker):
    """Random joins and leaves over many turns: a receiver that applies every delta to its first
    full Members holds exactly the broker's membership after each flush."""
    import random

    rnd = random.Random(7)
    register(broker, 1, "observer")  # its full Members went out at the end of that turn
    held = {"observer": "100.64.0.1"}
    version = broker.members_version
    live: dict[str, int] = {}
    next_cid = 100
    for _turn in range(60):
        for _ in range(rnd.randint(0, 4)):
            if live and rnd.random() < 0.4:
                name = rnd.choice(sorted(live))
                broker.connection_lost(live.pop(name))
            else:
                name = f"h{rnd.randint(0, 30)}"
                if name in live:
                    continue
                next_cid += 1
                login(broker, next_cid)
                broker.message_received(next_cid, m.Register(name=name, service="h", instance=f"{next_cid:08x}"), 0.0)
                live[name] = next_cid
        for msg in sent(broker.flush_members(), 1):
            assert isinstance(msg, m.MembersDelta) and msg.base == version
            for name in msg.gone:
                del held[name]
            held.update(msg.hosts)
            version = msg.version
        assert held == broker.members()


def _two_hosts_with_tickets(broker):
    session_a, addr_a = register(broker, 1, "web", "198.18.1.1:40000")
    session_b, addr_b = register(broker, 2, "kv", "198.18.1.2:40000")
    assert observe(broker, 11, session_a, "aaaa0001", "198.18.1.1:50001") == m.Observed(endpoint="198.18.1.1:50001")
    observe(broker, 12, session_b, "bbbb0001", "198.18.1.2:50002")
    return addr_a, addr_b


def test_full_brokered_connect_sends_each_side_the_others_public_endpoint(broker):
    addr_a, addr_b = _two_hosts_with_tickets(broker)
    actions = broker.message_received(
        1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=6379, src_port=50001, ticket="aaaa0001"), 0.0)
    assert actions == [Send(2, m.Incoming(conn="c0ffee01", src_addr=addr_a, src_port=50001, dst_port=6379))]
    actions = broker.message_received(2, m.Accept(conn="c0ffee01", ticket="bbbb0001"), 0.001)
    salt = sent(actions)[0].salt
    key = auth.connection_key(SECRET, "c0ffee01", salt)  # the relay derives it the same way
    # Wrapped for each receiver under the credential its session proved (here both sessions
    # logged in with the secret; instances' tokens: tests/test_roles.py).
    wrapped = auth.wrap_connection_key(SECRET, key, "c0ffee01", salt).hex()
    assert actions == [
        Send(1, m.Punch(conn="c0ffee01", role="client", peer="198.18.1.2:50002", ticket="aaaa0001",
                        wrapped_key=wrapped, salt=salt)),
        Send(2, m.Punch(conn="c0ffee01", role="server", peer="198.18.1.1:50001", ticket="bbbb0001",
                        wrapped_key=wrapped, salt=salt)),
    ]
    # tickets are single use
    again = broker.message_received(
        1, m.Connect(conn="c0ffee02", dst_addr=addr_b, dst_port=6379, src_port=50001, ticket="aaaa0001"), 0.0)
    assert sent(again) == [m.Error(ref="c0ffee02", reason="unknown ticket")]


def test_refused_connect_reaches_the_client(broker):
    _, addr_b = _two_hosts_with_tickets(broker)
    broker.message_received(
        1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=1, src_port=50001, ticket="aaaa0001"), 0.0)
    actions = broker.message_received(2, m.Refuse(conn="c0ffee01", error="ECONNREFUSED"), 0.0)
    assert actions == [Send(1, m.ConnectFailed(conn="c0ffee01", error="ECONNREFUSED"))]


def test_connect_to_an_address_nobody_holds_is_ehostunreach(broker):
    _two_hosts_with_tickets(broker)
    actions = broker.message_received(
        1, m.Connect(conn="c0ffee01", dst_addr="100.64.0.99", dst_port=80, src_port=50001, ticket="aaaa0001"), 0.0)
    assert actions == [Send(1, m.ConnectFailed(conn="c0ffee01", error="EHOSTUNREACH"))]


def test_silent_server_agent_times_out_at_the_deadline(broker):
    _, addr_b = _two_hosts_with_tickets(broker)
    broker.message_received(
        1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=80, src_port=50001, ticket="aaaa0001"), 10.0)
    assert broker.next_deadline() == 13.0
    assert broker.expire(12.999) == []
    assert broker.expire(13.0) == [Send(1, m.ConnectFailed(conn="c0ffee01", error="ETIMEDOUT"))]
    assert broker.next_deadline() is None


def test_server_vanishing_fails_its_pending_connects(broker):
    _, addr_b = _two_hosts_with_tickets(broker)
    broker.message_received(
        1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=80, src_port=50001, ticket="aaaa0001"), 0.0)
    actions = broker.connection_lost(2)
    assert Send(1, m.ConnectFailed(conn="c0ffee01", error="EHOSTUNREACH")) in actions


def test_rendezvous_with_a_forged_proof_is_refused(broker):
    session, _ = register(broker, 1, "web")
    broker.connection_made(5, "198.18.1.1:50001")
    actions = broker.message_received(5, m.Observe(v=m.PROTOCOL_VERSION, session=session, ticket="aaaa0001", mac="00" * 32), 0.0)
    assert isinstance(sent(actions)[0], m.Refused) and isinstance(actions[-1], Close)


def test_protocol_error_closes_only_that_connection(broker):
    register(broker, 1, "kv")
    broker.connection_made(2, "198.18.1.9:1")
    actions = broker.protocol_error(2, "frame is not valid JSON")
    assert actions == [Close(2, "protocol error: frame is not valid JSON")]
    assert broker.members() == {"kv": "100.64.0.1"}


def test_same_instance_re_registering_replaces_its_old_session(broker):
    register(broker, 1, "kv")
    login(broker, 2, "198.18.1.1:40001")
    actions = broker.message_received(
        2, m.Register(name="kv", service="kv", instance="12345678", addr="100.64.0.1"), 1.0)
    assert Close(1, "replaced by a new session of the same instance") in actions
    assert m.Registered(name="kv", addr="100.64.0.1", prefix="100.64.0.0/24", beat=Timeouts().beat) in sent(actions, 2)
    assert broker.members() == {"kv": "100.64.0.1"}


def test_a_different_instance_cannot_take_a_live_name(broker):
    register(broker, 1, "kv")
    login(broker, 2)
    actions = broker.message_received(2, m.Register(name="kv", service="kv", instance="87654321"), 1.0)
    assert isinstance(sent(actions, 2)[0], m.Error)
    assert not any(isinstance(a, Close) for a in actions)


def test_silent_session_is_closed_and_its_instance_leaves(broker):
    register(broker, 1, "kv")  # last heard at t=0
    register(broker, 2, "web")
    for tick in range(151):  # expire() runs every 0.1 s
        if tick == 140:
            broker.message_received(2, m.Ping(seq=1), 14.0)
        assert not [a for a in broker.expire(tick / 10) if isinstance(a, Close)]
    actions = broker.expire(15.1)
    assert Close(1, "silent") in actions
    assert broker.flush_members() == [Send(2, m.MembersDelta(base=2, version=3, hosts={}, gone=["kv"]))]


def test_a_coordinator_frozen_longer_than_the_silence_limit_closes_no_session(broker):
    """SIGSTOP of the coordinator for 20 s: its agents' frames wait unread in the sockets, and
    the first expire() after it runs before they are read. Closing every session then would
    make every agent reconnect and the controller see every instance leave."""
    register(broker, 1, "kv")
    for tick in range(11):
        broker.expire(tick / 10)
    assert not [a for a in broker.expire(20.0) if isinstance(a, Close)]  # the first look after it
    broker.message_received(1, m.Ping(seq=1), 20.0)
    for tick in range(201, 351):
        assert not [a for a in broker.expire(tick / 10) if isinstance(a, Close)]
    assert Close(1, "silent") in broker.expire(35.1)  # really silent since our return: closed


# --- services, signals and the controller ---------------------------------------------------------

def report(broker, cid, active=0, listening=(80,), now=0.0):
    return broker.message_received(cid, m.Report(active=active, accepted=0, connected=0, cpu=0.0, rss=0,
                                                 listening=list(listening), idle=0.0, direct=0, relayed=0), now)


def watch(broker, cid):
    login(broker, cid, "198.18.0.9:1000")
    return sent(broker.message_received(cid, m.Watch(), 0.0), cid)


def web_instances(broker):
    """web-1 (cid 1), web-2 (cid 2), and a client (cid 3) with an outgoing ticket."""
    for cid, name in ((1, "web-1"), (2, "web-2")):
        login(broker, cid)
        broker.message_received(cid, m.Register(name=name, service="web", instance=f"{cid:08x}"), 0.0)
    session, _ = register(broker, 3, "client")
    observe(broker, 13, session, "cccc0001", "198.18.1.3:50003")
    return session


def test_instances_of_a_service_give_it_a_virtual_address_from_the_top_of_the_prefix(broker):
    web_instances(broker)
    assert broker.services.vips() == {"web": "100.64.0.254"}
    members = [msg for msg in sent(broker.message_received(3, m.Ping(seq=1), 0.0))]
    assert members == [m.Pong(seq=1)]


def test_connect_to_a_service_goes_to_the_least_loaded_listening_instance(broker):
    web_instances(broker)
    report(broker, 1, active=5)
    report(broker, 2, active=1)
    actions = broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 0.0)
    assert [a.cid for a in actions] == [2]  # slow path Incoming to web-2
    assert isinstance(sent(actions)[0], m.Incoming)


def test_draining_instances_get_no_new_connections(broker):
    web_instances(broker)
    assert watch(broker, 9)[0].TYPE == "snapshot"
    report(broker, 1, active=0)
    report(broker, 2, active=9)
    assert sent(broker.message_received(9, m.Drain(instance="00000001", grace=5.0), 0.0), 1) == \
        [m.Drain(instance="00000001", grace=5.0)]
    actions = broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 0.0)
    assert [a.cid for a in actions] == [2]


def test_connect_to_a_declared_service_without_instances_is_held_then_released(broker):
    session, _ = register(broker, 3, "client")
    observe(broker, 13, session, "cccc0001", "198.18.1.3:50003")
    watch(broker, 9)
    assert broker.flush_members() == [Send(9, m.Members(hosts={"client": "100.64.0.1"}, version=1))]
    assert broker.message_received(9, m.Declare(services={"api": 10}), 0.0) == []
    delta = m.MembersDelta(base=1, version=2, hosts={}, gone=[], services={"api": "100.64.0.254"})
    assert broker.flush_members() == [Send(3, delta), Send(9, delta)]
    actions = broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=8080, src_port=50003, ticket="cccc0001"), 1.0)
    assert actions == [Send(9, m.Demand(service="api", port=8080, waiting=1))]
    login(broker, 4)
    up = broker.message_received(4, m.Register(name="api-1", service="api", instance="0000000a"), 1.5)
    assert m.InstanceUp(name="api-1", service="api", addr="100.64.0.2", instance="0000000a") in sent(up, 9)
    assert report(broker, 4, listening=(9999,), now=1.6)[1:] == []  # not the port asked for: still held
    released = report(broker, 4, listening=(8080,), now=1.7)
    assert isinstance(released[0], Send) and released[0].message.TYPE == "instance_report"
    assert any(isinstance(a, Send) and a.cid == 4 and isinstance(a.message, m.Incoming) for a in released)


def test_held_connect_times_out_with_etimedout(broker):
    session, _ = register(broker, 3, "client")
    observe(broker, 13, session, "cccc0001", "198.18.1.3:50003")
    watch(broker, 9)
    broker.message_received(9, m.Declare(services={"api": 10}), 0.0)
    broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=8080, src_port=50003, ticket="cccc0001"), 1.0)
    assert broker.next_deadline() == 11.0
    assert broker.expire(11.0) == [Send(3, m.ConnectFailed(conn="c0ffee01", error="ETIMEDOUT"))]


def test_a_service_declared_failing_refuses_its_held_and_new_connects_at_once(broker):
    """The controller declares a crash-looping service with hold 0: the connects held for it get
    ECONNREFUSED now, as do new ones, instead of waiting out scaleFromZeroTimeoutSeconds."""
    session, _ = register(broker, 3, "client")
    observe(broker, 13, session, "cccc0001", "198.18.1.3:50003")
    observe(broker, 14, session, "cccc0002", "198.18.1.3:50004")
    watch(broker, 9)
    broker.message_received(9, m.Declare(services={"api": 10}), 0.0)
    broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=8080, src_port=50003, ticket="cccc0001"), 1.0)
    assert broker.message_received(9, m.Declare(services={"api": 0}), 2.0) == [
        Send(3, m.ConnectFailed(conn="c0ffee01", error="ECONNREFUSED"))]
    assert broker.message_received(
        3, m.Connect(conn="c0ffee02", dst_addr="100.64.0.254", dst_port=8080, src_port=50004, ticket="cccc0002"),
        2.5) == [Send(3, m.ConnectFailed(conn="c0ffee02", error="ECONNREFUSED"))]
    assert broker.expire(11.0) == []


def test_undeclared_service_with_nothing_listening_refuses(broker):
    web_instances(broker)
    actions = broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 0.0)
    assert actions == [Send(3, m.ConnectFailed(conn="c0ffee01", error="ECONNREFUSED"))]


def test_watchers_see_reports_and_departures_and_only_they_may_declare(broker):
    web_instances(broker)
    snapshot = watch(broker, 9)[0]
    assert sorted(i["name"] for i in snapshot.instances) == ["client", "web-1", "web-2"]
    forwarded = sent(report(broker, 1, active=3), 9)[0]
    assert forwarded.name == "web-1" and forwarded.report["active"] == 3
    gone = sent(broker.connection_lost(1), 9)
    assert m.InstanceDown(name="web-1", service="web", instance="00000001", reason="connection lost") in gone
    refused = sent(broker.message_received(3, m.Declare(services={"x": 1}), 0.0))[0]
    assert isinstance(refused, m.Error)


def test_metrics_count_outcomes_and_paths(broker):
    from boxer.nat_traversal.metrics import render
    from boxer.nat_traversal.relay import RelayStats

    web_instances(broker)
    broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 0.0)
    broker.message_received(1, m.Report(active=0, accepted=3, connected=0, cpu=0.0, rss=0, listening=[80], idle=0.0,
                                        direct=2, relayed=1), 0.0)
    text = render(broker, RelayStats())
    assert 'boxer_coordinator_connects_total{result="ECONNREFUSED"} 1' in text
    assert 'boxer_connections_total{path="direct"} 2' in text
    assert 'boxer_connections_total{path="relayed"} 1' in text
    assert 'boxer_coordinator_instances{service="web"} 2' in text
    broker.connection_lost(1)  # its counts outlive it
    assert 'boxer_connections_total{path="direct"} 2' in render(broker, None)


# --- heartbeats: quiet instances ------------------------------------------------------------------

def run_until(broker, start, end, beats=(), step=0.1):
    """Drive the broker as the coordinator does: expire() every `step`; each cid in `beats` sends a
    Beat every 0.2 s. Returns every action with the time it happened."""
    out = []
    now, next_beat = start, start
    while now <= end + 1e-9:
        if now >= next_beat - 1e-9:
            for cid in beats:
                out += [(round(now, 3), a) for a in broker.message_received(cid, m.Beat(), now)]
            next_beat += 0.2
        out += [(round(now, 3), a) for a in broker.expire(now)]
        now = round(now + step, 6)
    return out


def quiet_messages(timed, cid=9):
    return [(t, a.message) for t, a in timed if isinstance(a, Send) and a.cid == cid
            and isinstance(a.message, m.InstanceQuiet)]


def test_registered_tells_the_agent_how_often_to_beat(broker):
    login(broker, 1)
    replies = sent(broker.message_received(1, m.Register(name="kv", service="kv", instance="12345678"), 0.0), 1)
    assert replies[0].beat == Timeouts().beat == 0.2


def test_a_silent_instance_is_quiet_after_the_limit_and_heard_again_later(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    watch(broker, 9)
    # Both beat until t=1; then kv stops (SIGSTOP), web goes on.
    timed = run_until(broker, 0.0, 1.0, beats=(1, 2))
    timed += run_until(broker, 1.1, 3.0, beats=(2,))
    quiet = quiet_messages(timed)
    assert [(msg.name, msg.quiet) for _, msg in quiet] == [("kv", True)]
    at, msg = quiet[0]
    # Last beat at 1.0: quiet once more than 0.8 s passed, seen by the next 0.1 s tick.
    assert 1.8 <= at <= 1.9 and msg.silent == pytest.approx(at - 1.0)
    assert msg.service == "kv" and msg.instance == "12345678"
    assert [i.name for i in broker.instances if i.quiet] == ["kv"]
    assert broker.quiet_count == 1
    # Its session is not closed for being quiet: only `silence` (15 s) does that.
    assert not any(isinstance(a, Close) for _, a in timed)
    # Any frame from it (a thaw) ends the quiet, and watchers hear that too.
    again = broker.message_received(1, m.Beat(), 3.05)
    assert sent(again, 9) == [m.InstanceQuiet(name="kv", service="kv", instance="12345678", quiet=False,
                                              silent=2.05)]
    assert broker.quiet_count == 0
    assert quiet_messages(run_until(broker, 3.1, 4.0, beats=(1, 2))) == []


def test_beats_are_never_answered_and_keep_an_instance_from_going_quiet(broker):
    register(broker, 1, "kv")
    watch(broker, 9)
    assert broker.message_received(1, m.Beat(), 0.1) == []
    timed = run_until(broker, 0.0, 10.0, beats=(1,))
    assert [a for _, a in timed] == []


def test_a_report_or_any_frame_counts_as_being_heard(broker):
    register(broker, 1, "kv")
    watch(broker, 9)
    timed = []
    for i in range(40):  # a frame every 0.7 s, no beats: never quiet
        now = round(i * 0.1, 3)
        if i % 7 == 0:
            report(broker, 1, now=now)
        timed += [(now, a) for a in broker.expire(now)]
    assert quiet_messages(timed) == []


def test_a_coordinator_stall_is_not_blamed_on_the_agents(broker):
    register(broker, 1, "kv")
    watch(broker, 9)
    timed = run_until(broker, 0.0, 1.0, beats=(1,))
    # The coordinator's own loop stops for 2 s: the agent's beats wait unread in the socket, and
    # the first expire() after the stall runs before they are read.
    timed += [(3.0, a) for a in broker.expire(3.0)]
    timed += [(3.0, a) for a in broker.message_received(1, m.Beat(), 3.0)]
    timed += run_until(broker, 3.1, 5.0, beats=(1,))
    assert quiet_messages(timed) == []
    # ...but an agent that really stopped during the stall is quiet 0.8 s after it.
    timed = run_until(broker, 5.1, 5.5, beats=())
    timed += [(8.0, a) for a in broker.expire(8.0)]
    timed += run_until(broker, 8.1, 9.0, beats=())
    [(at, _)] = quiet_messages(timed)
    assert 8.8 <= at <= 8.9


def test_a_service_connect_waiting_on_an_instance_gone_quiet_is_failed_so_it_is_asked_again(broker):
    web_instances(broker)
    report(broker, 1, active=0)
    report(broker, 2, active=5)
    # The connect goes to web-1 (least loaded), which then hangs: no frame from it again.
    broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 0.0)
    timed = run_until(broker, 0.0, 1.0, beats=(2, 3))
    failed = [(t, a) for t, a in timed if isinstance(a, Send) and a.cid == 3]
    # Quiet after 0.8 s (the next 0.1 s tick sees it): the client is told EHOSTUNREACH then,
    # not at the connect's own deadline.
    assert [(t, a.message) for t, a in failed] == [
        (0.9, m.ConnectFailed(conn="c0ffee01", error="EHOSTUNREACH"))]
    # Its agent asks again: the quiet web-1 is passed over, though it is the least loaded.
    observe(broker, 14, broker._connections[3].session, "cccc0002", "198.18.1.3:50004")
    again = broker.message_received(
        3, m.Connect(conn="c0ffee02", dst_addr="100.64.0.254", dst_port=80, src_port=50004, ticket="cccc0002"), 1.0)
    assert [a.cid for a in again] == [2]
    # A connect to web-1's own address is not given up: the instance may yet answer.
    observe(broker, 15, broker._connections[3].session, "cccc0003", "198.18.1.3:50005")
    direct = broker.message_received(
        3, m.Connect(conn="c0ffee03", dst_addr=broker._by_name["web-1"].addr, dst_port=80, src_port=50005,
                     ticket="cccc0003"), 1.0)
    assert [a.cid for a in direct] == [1]
    assert [a for _, a in run_until(broker, 1.1, 1.5, beats=(2, 3)) if getattr(a, "cid", None) == 3] == []


def test_when_every_instance_is_quiet_a_service_connect_still_goes_to_one(broker):
    web_instances(broker)
    report(broker, 1, active=0)
    report(broker, 2, active=5)
    run_until(broker, 0.0, 1.0, beats=(3,))  # both quiet: the silence is likelier ours
    assert broker.quiet_count == 2
    actions = broker.message_received(
        3, m.Connect(conn="c0ffee01", dst_addr="100.64.0.254", dst_port=80, src_port=50003, ticket="cccc0001"), 1.0)
    assert [a.cid for a in actions] == [1]


def test_the_snapshot_says_which_instances_are_quiet(broker):
    register(broker, 1, "kv")
    register(broker, 2, "web")
    run_until(broker, 0.0, 2.0, beats=(2,))
    snapshot = watch(broker, 9)[0]
    assert {i["name"]: i["quiet"] for i in snapshot.instances} == {"kv": True, "web": False}


def test_unregistered_sessions_and_watchers_are_never_quiet(broker):
    login(broker, 1)  # authenticated, not registered
    watch(broker, 9)
    assert quiet_messages(run_until(broker, 0.0, 5.0)) == []


def test_no_beat_configured_means_no_quiet():
    broker = Broker(SECRET, prefix="100.64.0.0/24", timeouts=Timeouts(beat=None), new_token=tokens())
    login(broker, 1)
    registered = sent(broker.message_received(1, m.Register(name="kv", service="kv", instance="12345678"), 0.0), 1)
    assert registered[0].beat is None
    watch(broker, 9)
    assert quiet_messages(run_until(broker, 0.0, 5.0)) == []


def test_metrics_count_quiet_instances(broker):
    from boxer.nat_traversal.metrics import render

    register(broker, 1, "kv")
    run_until(broker, 0.0, 2.0)
    assert "boxer_coordinator_quiet_instances 1" in render(broker, None)


# --- the I/O layer: membership flushed once per turn of the event loop ----------------------------

class _FakeTransport:
    def __init__(self, port: int) -> None:
        self.port = port
        self.written = b""

    def get_extra_info(self, key):
        return ("198.18.1.1", self.port) if key == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _frames(transport: _FakeTransport) -> list[m.Message]:
    from boxer.nat_traversal.wire import FrameDecoder

    decoder = FrameDecoder()
    decoder.receive_data(transport.written)
    transport.written = b""
    return [m.decode(frame) for frame in iter(decoder.next_frame, None)]


def test_the_coordinator_flushes_registrations_of_one_loop_turn_as_one_update():
    import asyncio

    from boxer.nat_traversal.coordinator import CoordinatorServer, _PeerProtocol
    from boxer.nat_traversal.wire import encode_frame

    async def scenario() -> dict[int, list[str]]:
        server = CoordinatorServer(Broker(SECRET, prefix="100.64.0.0/24", new_token=tokens()))
        peers = []
        for i in range(4):
            peer, transport = _PeerProtocol(server), _FakeTransport(40000 + i)
            peer.connection_made(transport)  # type: ignore[arg-type]
            (challenge,) = _frames(transport)
            nonce = "ab" * 16
            peer.data_received(encode_frame(m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(
                SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)).to_wire()))
            _frames(transport)  # Welcome
            peers.append((peer, transport))
        peers[0][0].data_received(encode_frame(m.Register(name="a0", service="a0", instance="00000001").to_wire()))
        await asyncio.sleep(0)  # the turn ends: a0 gets its full Members
        _frames(peers[0][1])
        for i, (peer, _) in enumerate(peers[1:], 1):  # three registrations in one turn
            peer.data_received(encode_frame(m.Register(name=f"a{i}", service=f"a{i}", instance=f"{i + 1:08x}").to_wire()))
        await asyncio.sleep(0)
        return {i: [f.TYPE for f in _frames(transport)] for i, (_, transport) in enumerate(peers)}

    assert asyncio.run(scenario()) == {0: ["members_delta"], 1: ["registered", "members"],
                                       2: ["registered", "members"], 3: ["registered", "members"]}


def test_a_snapshot_of_a_thousand_instances_reaches_the_controller():
    """Frames from the coordinator grow with the fleet (here ~0.3 MB, over the 64 KiB that
    anyone may send to the coordinator): they are allowed up to MAX_DOWNSTREAM_FRAME, and the
    agents' and controller's side reads them."""
    import asyncio

    from boxer.agent.control import FramedSocket
    from boxer.nat_traversal.coordinator import CoordinatorServer, _PeerProtocol
    from boxer.nat_traversal.wire import MAX_FRAME, FrameDecoder, ProtocolError

    report = m.Report(active=3, accepted=120, connected=4, cpu=12.5, rss=31_000_000, listening=[8080],
                      idle=0.0, direct=4, relayed=0, first_try=4, draining=False, lifetime_left=812.4,
                      exited=None).to_wire()
    del report["t"]
    instances = [{"name": f"api-{i}", "service": "api", "addr": f"100.64.{i // 250}.{i % 250 + 1}",
                  "instance": f"{i:016x}", "nat": "eim", "draining": False, "quiet": False,
                  "report": report} for i in range(1000)]
    snapshot = m.Snapshot(instances=instances, services={"api": "100.127.255.254"})

    async def scenario() -> bytes:
        server = CoordinatorServer(Broker(SECRET, prefix="100.64.0.0/16", new_token=tokens()))
        peer, transport = _PeerProtocol(server), _FakeTransport(40000)
        peer.connection_made(transport)  # type: ignore[arg-type]
        transport.written = b""  # its Challenge
        server.apply([Send(peer.cid, snapshot)])
        return transport.written

    written = asyncio.run(scenario())
    assert len(written) > MAX_FRAME
    with pytest.raises(ProtocolError):  # what the coordinator itself would accept: not this
        refusing = FrameDecoder(MAX_FRAME)
        refusing.receive_data(written)
        refusing.next_frame()
    decoder = FrameDecoder(FramedSocket.MAX_RECEIVE)  # what agents and the controller accept
    decoder.receive_data(written)
    assert m.decode(decoder.next_frame()) == snapshot

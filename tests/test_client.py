"""The agent's half of the protocol (boxer.nat_traversal.client) on a virtual clock: no sockets,
no sleeping, exact times and errnos. The lab tests (test_overlay, test_nat_types, test_services)
prove the same paths end to end with real NATs."""

from __future__ import annotations

import itertools

import pytest

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import (
    Abandon,
    Authenticated,
    ClaimTicket,
    ClosePath,
    Connected,
    ConnectState,
    ConnectTransaction,
    Deliver,
    Failed,
    Handshake,
    HandshakeRefused,
    HandshakeState,
    Heartbeat,
    IllegalTransition,
    IncomingState,
    IncomingTransaction,
    Joined,
    LinkLost,
    Path,
    PathRace,
    PathState,
    Punch,
    RaceFailed,
    RaceWon,
    ReleaseTicket,
    SendBeat,
    SendMessage,
    SendPing,
    SendProof,
    SpareGoals,
    StartPath,
    TakeTicket,
    Timeouts,
)
from boxer.nat_traversal.wire import ProtocolError

T = Timeouts()  # connect 5 s, punch 3 s, relay after 0.25 s, 3 attempts, 1 s margin
KEY = "c0" * 32  # a connection's key wrapped for its receiver, as the coordinator sends it in Punch/Incoming
D, R = Path.DIRECT, Path.RELAY


def race(role: str = "client", mode: str = "direct", relay: bool = True) -> PathRace:
    return PathRace("cc000001", role, mode, relay, T)


# --- the paths' race ----------------------------------------------------------------------------


def test_a_clean_punch_wins_before_the_relay_is_ever_started() -> None:
    r = race()
    assert r.start(100.0) == [StartPath(D, 103.0)]
    assert r.next_timer() == 100.25  # the relay's start
    # The direct path opens in 2 ms: the client chooses it, and the relay is never started.
    assert r.opened(D, 100.002) == [SendProof(D)]
    assert r.states == {D: PathState.CHOSEN, R: PathState.CLOSED}
    assert r.next_timer() == 103.0
    assert r.proven(D, 100.003) == [RaceWon(D)]
    assert r.next_timer() is None
    assert [(t, p, s) for t, p, s in r.history] == [
        (100.0, D, PathState.OPENING), (100.002, D, PathState.OPEN), (100.002, D, PathState.CHOSEN),
        (100.002, R, PathState.CLOSED), (100.003, D, PathState.WON)]


def test_the_relay_starts_exactly_after_its_delay_and_wins_when_the_punch_stays_silent() -> None:
    r = race()
    r.start(0.0)
    assert r.tick(0.2499) == []
    assert r.tick(0.25) == [StartPath(R, 3.0)]
    assert r.next_timer() == 3.0
    assert r.opened(R, 0.252) == []  # joined the relay: says nothing of the peer yet
    # The server's proof came through the relay: the client chooses it, proves itself on it
    # alone, and the punch still under way is closed.
    assert r.proven(R, 0.254) == [SendProof(R), ClosePath(D), RaceWon(R)]
    assert r.states == {D: PathState.CLOSED, R: PathState.WON}


def test_a_punch_that_opens_while_the_relay_waits_for_its_peer_is_chosen() -> None:
    r = race()
    r.start(0.0)
    r.tick(0.25)
    r.opened(R, 0.26)
    assert r.opened(D, 0.9) == [SendProof(D), ClosePath(R)]
    assert r.proven(D, 0.901) == [RaceWon(D)]


def test_the_server_proves_itself_on_every_path_and_keeps_the_one_the_client_chose() -> None:
    r = race("server")
    assert r.start(0.0) == [StartPath(D, 3.0)]
    assert r.tick(0.25) == [StartPath(R, 3.0)]
    assert r.opened(D, 0.3) == [SendProof(D)]  # the server does not choose: no path closed
    assert r.opened(R, 0.31) == [SendProof(R)]
    # The client's proof arrived on the relay only: it chose the relay.
    assert r.proven(R, 0.32) == [ClosePath(D), RaceWon(R)]


def test_symmetric_nat_goes_straight_to_the_relay() -> None:
    r = race(mode="relay")
    assert r.start(5.0) == [StartPath(R, 8.0)]
    assert r.states[D] is PathState.CLOSED
    assert r.next_timer() == 8.0


def test_an_early_direct_failure_starts_the_relay_at_once() -> None:
    r = race()
    r.start(0.0)
    assert r.failed(D, "ETIMEDOUT", 0.1) == [StartPath(R, 3.0)]
    r.opened(R, 0.11)
    assert r.proven(R, 0.12) == [SendProof(R), RaceWon(R)]


def test_without_a_relay_the_punch_has_the_whole_deadline_and_then_etimedout() -> None:
    r = race(relay=False)
    assert r.start(0.0) == [StartPath(D, 3.0)]
    assert r.next_timer() == 3.0
    assert r.tick(2.999) == []
    assert r.tick(3.0) == [ClosePath(D), RaceFailed("ETIMEDOUT", "no path within 3 s")]


def test_both_paths_silent_is_etimedout_at_the_deadline_with_both_closed() -> None:
    r = race()
    r.start(0.0)
    r.tick(0.25)
    r.opened(R, 0.3)
    assert r.tick(3.0) == [ClosePath(D), ClosePath(R), RaceFailed("ETIMEDOUT", "no path within 3 s")]


def test_a_chosen_path_whose_peer_fails_to_prove_itself_ends_the_race() -> None:
    r = race()
    r.start(0.0)
    r.opened(D, 0.01)
    assert r.failed(D, "ECONNABORTED", 0.02) == [RaceFailed("ECONNABORTED", "the chosen direct path failed")]


def test_every_path_failed_prefers_the_authentication_failure() -> None:
    r = race("server")
    r.start(0.0)
    r.opened(D, 0.01)
    r.tick(0.25)
    assert r.failed(D, "ECONNABORTED", 0.3) == []  # the relay is still under way
    assert r.failed(R, "ETIMEDOUT", 0.4) == [RaceFailed("ECONNABORTED", "every path failed")]


def test_late_news_of_a_closed_path_closes_its_socket_and_changes_nothing() -> None:
    r = race()
    r.start(0.0)
    r.tick(0.25)
    r.opened(D, 0.3)  # chosen; the relay closed while it was still connecting
    assert r.opened(R, 0.31) == [ClosePath(R)]
    assert r.failed(R, "ETIMEDOUT", 0.32) == []
    assert r.states == {D: PathState.CHOSEN, R: PathState.CLOSED}


def test_an_illegal_event_names_event_role_and_state() -> None:
    r = race()
    r.start(0.0)
    with pytest.raises(IllegalTransition, match="event 'proven' is not legal for the client in state 'waiting'"):
        r.proven(R, 0.1)
    with pytest.raises(IllegalTransition, match="event 'start' is not legal for the client"):
        r.start(0.2)
    with pytest.raises(ValueError, match="role must be client or server"):
        PathRace("cc000001", "peer", "direct", True, T)


# --- one app connect ----------------------------------------------------------------------------


def tokens() -> object:
    counter = itertools.count(1)
    return lambda: f"cc{next(counter):06d}"


def connect(service: bool = False, timeouts: Timeouts = T) -> ConnectTransaction:
    return ConnectTransaction("100.64.0.7", 6379, service, timeouts, new_token=tokens())  # type: ignore[arg-type]


def punch(conn: str) -> m.Punch:
    return m.Punch(conn=conn, role="client", peer="198.51.100.2:40001", ticket="ab0000ff", wrapped_key=KEY, salt="5a170001",
                   mode="direct")


def test_a_connect_takes_a_ticket_asks_punches_and_connects() -> None:
    tx = connect()
    assert tx.begin(10.0) == [TakeTicket(15.0)]
    assert tx.ticket("ab000001", 40000, 10.001) == [SendMessage(m.Connect(
        conn="cc000001", dst_addr="100.64.0.7", dst_port=6379, src_port=40000, ticket="ab000001", warm=False))]
    assert tx.state is ConnectState.ASKED
    assert tx.message(punch("cc000001"), 10.002) == [Punch(punch("cc000001"), 40000)]
    assert tx.race_won(D, 10.004) == [Connected("cc000001", D, 40000, 1)]
    assert tx.next_timer() is None


def test_ehostunreach_to_a_service_is_asked_again_up_to_three_attempts() -> None:
    tx = connect(service=True)
    assert tx.begin(0.0) == [TakeTicket(125.0)]  # 5 s connect + 120 s a service may be held
    tx.ticket("ab000001", 40000, 0.001)
    # The instance the coordinator chose went away while the connection was set up.
    assert tx.message(m.ConnectFailed(conn="cc000001", error="EHOSTUNREACH"), 0.8) == [Abandon("cc000001"), TakeTicket(125.0)]
    assert tx.ticket("ab000002", 40002, 0.801) == [SendMessage(m.Connect(
        conn="cc000002", dst_addr="100.64.0.7", dst_port=6379, src_port=40002, ticket="ab000002", warm=False))]
    # A refusal that arrives while the paths race ends the attempt too.
    tx.message(punch("cc000002"), 0.802)
    assert tx.message(m.ConnectFailed(conn="cc000002", error="EHOSTUNREACH"), 1.6) == [Abandon("cc000002"), TakeTicket(125.0)]
    tx.ticket("ab000003", 40004, 1.601)
    assert tx.message(m.ConnectFailed(conn="cc000003", error="EHOSTUNREACH"), 2.4) == [
        Abandon("cc000003"), Failed("EHOSTUNREACH", "after 3 attempt(s)")]
    assert tx.errors == [(0.8, "EHOSTUNREACH"), (1.6, "EHOSTUNREACH"), (2.4, "EHOSTUNREACH")]
    assert tx.state is ConnectState.FAILED


def test_ehostunreach_to_an_instance_is_the_apps_at_once() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    assert tx.message(m.ConnectFailed(conn="cc000001", error="EHOSTUNREACH"), 0.002) == [
        Abandon("cc000001"), Failed("EHOSTUNREACH", "after 1 attempt(s)")]


def test_econnaborted_is_asked_again_and_econnrefused_is_not() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    tx.message(punch("cc000001"), 0.002)
    assert tx.race_failed("ECONNABORTED", 0.01) == [Abandon("cc000001"), TakeTicket(5.0)]
    tx.ticket("ab000002", 40002, 0.011)
    assert tx.message(m.ConnectFailed(conn="cc000002", error="ECONNREFUSED"), 0.012) == [
        Abandon("cc000002"), Failed("ECONNREFUSED", "after 2 attempt(s)")]


def test_no_other_attempt_with_less_than_the_margin_left() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    tx.message(punch("cc000001"), 0.002)
    assert tx.race_failed("ECONNABORTED", 4.0) == [Abandon("cc000001"), TakeTicket(5.0)]  # exactly 1 s left: yes
    tx.ticket("ab000002", 40002, 4.001)
    tx.message(punch("cc000002"), 4.002)
    assert tx.race_failed("ECONNABORTED", 4.003) == [Abandon("cc000002"), Failed("ECONNABORTED", "after 2 attempt(s)")]


def test_the_connect_deadline_is_etimedout_whatever_the_attempt_is_doing() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    assert tx.next_timer() == 5.0
    assert tx.tick(4.999) == []
    assert tx.tick(5.0) == [Abandon("cc000001"), Failed("ETIMEDOUT", "no connection within 5 s")]
    # News about it afterwards is ignored.
    assert tx.message(punch("cc000001"), 5.1) == []


def test_a_lost_link_is_enetunreach_and_a_local_failure_a_plain_one() -> None:
    tx = connect()
    tx.begin(0.0)
    assert tx.link_down(2.0) == [Failed("ENETUNREACH", "the coordinator is unreachable")]
    tx = connect()
    tx.begin(0.0)
    assert tx.local_error("EADDRINUSE", 0.1) == [Failed("ECONNABORTED", "a local resource failed")]


def test_news_of_an_earlier_attempt_is_ignored() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    tx.message(m.ConnectFailed(conn="cc000001", error="ECONNABORTED"), 0.01)
    tx.ticket("ab000002", 40002, 0.02)
    assert tx.message(punch("cc000001"), 0.03) == []
    assert tx.state is ConnectState.ASKED


def test_a_connect_out_of_order_names_event_role_and_state() -> None:
    tx = connect()
    tx.begin(0.0)
    tx.ticket("ab000001", 40000, 0.001)
    with pytest.raises(IllegalTransition, match="event 'race_won' is not legal for the client in state 'asked'"):
        tx.race_won(D, 0.002)


def test_a_spare_is_made_once() -> None:
    tx = ConnectTransaction("100.64.0.7", 6379, False, Timeouts(attempts=1), warm=True,
                            new_token=tokens())  # type: ignore[arg-type]
    tx.begin(0.0)
    (send,) = tx.ticket("ab000001", 40000, 0.001)
    assert isinstance(send, SendMessage) and send.message.warm is True  # type: ignore[attr-defined]
    assert tx.message(m.ConnectFailed(conn="cc000001", error="ECONNABORTED"), 0.01) == [
        Abandon("cc000001"), Failed("ECONNABORTED", "after 1 attempt(s)")]


# --- one connection to our app ------------------------------------------------------------------


def incoming(ticket: str | None = "de000001", warm: bool = False) -> m.Incoming:
    return m.Incoming(conn="dd000001", src_addr="100.64.0.9", src_port=51000, dst_port=6379, ticket=ticket,
                      peer="198.51.100.9:40100" if ticket else None, mode="direct", warm=warm,
                      wrapped_key=KEY if ticket else None, salt="5a170001" if ticket else None)


def test_nothing_listening_is_refused_and_the_deposited_ticket_released() -> None:
    tx = IncomingTransaction(incoming(), T)
    assert tx.begin(listening=False, spares_full=False, now=0.0) == [
        SendMessage(m.Refuse(conn="dd000001", error="ECONNREFUSED")), ReleaseTicket("de000001"),
        Failed("ECONNREFUSED", "refused")]
    assert tx.state is IncomingState.REFUSED


def test_a_spare_beyond_what_we_hold_is_refused_with_econnaborted() -> None:
    tx = IncomingTransaction(incoming(warm=True), T)
    assert tx.begin(listening=True, spares_full=True, now=0.0)[0] == SendMessage(
        m.Refuse(conn="dd000001", error="ECONNABORTED"))


def test_a_deposited_ticket_punches_at_once_and_is_delivered() -> None:
    tx = IncomingTransaction(incoming(), T)
    assert tx.begin(listening=True, spares_full=False, now=0.0) == [ClaimTicket("de000001")]
    assert tx.ticket("de000001", 41000, 0.001) == [Punch(m.Punch(
        conn="dd000001", role="server", peer="198.51.100.9:40100", ticket="de000001", wrapped_key=KEY, salt="5a170001",
        mode="direct"), 41000)]
    assert tx.race_won(D, 0.004) == [Abandon("dd000001"), Deliver(D, warm=False)]


def test_a_deposited_ticket_that_died_is_refused_with_econnaborted() -> None:
    tx = IncomingTransaction(incoming(), T)
    tx.begin(listening=True, spares_full=False, now=0.0)
    assert tx.no_ticket(0.001) == [SendMessage(m.Refuse(conn="dd000001", error="ECONNABORTED")),
                                   Failed("ECONNABORTED", "the deposited ticket is gone")]


def test_without_a_deposited_ticket_we_accept_and_wait_for_the_punch_until_the_deadline() -> None:
    tx = IncomingTransaction(incoming(ticket=None), T)
    assert tx.begin(listening=True, spares_full=False, now=0.0) == [TakeTicket(5.0)]
    assert tx.ticket("0e000001", 41002, 0.01) == [SendMessage(m.Accept(conn="dd000001", ticket="0e000001"))]
    assert tx.tick(4.99) == []
    assert tx.tick(5.0) == [Abandon("dd000001"), Failed("ETIMEDOUT", "no punch in time")]


def test_the_punch_after_our_accept_starts_the_race() -> None:
    tx = IncomingTransaction(incoming(ticket=None), T)
    tx.begin(listening=True, spares_full=False, now=0.0)
    tx.ticket("0e000001", 41002, 0.01)
    p = m.Punch(conn="dd000001", role="server", peer="198.51.100.9:40100", ticket="0e000001", wrapped_key=KEY,
                salt="5a170002", mode="relay")
    assert tx.message(p, 0.02) == [Punch(p, 41002)]
    assert tx.message(m.ConnectFailed(conn="dd000001", error="ECONNABORTED"), 0.03) == []  # late news
    assert tx.race_failed("ETIMEDOUT", 3.02) == [Abandon("dd000001"), Failed("ETIMEDOUT", "no path")]


# --- warm spares --------------------------------------------------------------------------------


def test_spare_goals_grow_while_the_app_outruns_the_maker_up_to_the_most() -> None:
    goals = SpareGoals(initial=1, most=4)
    target = ("100.64.0.7", 6379)
    assert goals.should_start(target, have=0) is True
    assert goals.should_start(target, have=0) is False  # one maker per target
    for _ in range(5):
        goals.missed(target)
    assert goals.wanted(target, have=1) == 3
    goals.done(target)
    goals.missed(target)  # no maker running: the goal stays
    assert goals.goals[target] == 4
    assert SpareGoals(initial=0).should_start(target, have=0) is False


# --- beats and pings ----------------------------------------------------------------------------


def test_beats_every_step_and_a_ping_in_place_of_a_beat_every_interval() -> None:
    hb = Heartbeat(beat=0.25, ping_interval=1.0, silence=3.0, now=0.0)
    sent = []
    now = 0.0
    for _ in range(8):
        now = hb.next_timer()
        sent.append((now, hb.tick(now)))
    assert sent == [(0.25, [SendBeat()]), (0.5, [SendBeat()]), (0.75, [SendBeat()]), (1.0, [SendPing(1)]),
                    (1.25, [SendBeat()]), (1.5, [SendBeat()]), (1.75, [SendBeat()]), (2.0, [SendPing(2)])]


def test_without_beats_only_pings() -> None:
    hb = Heartbeat(beat=None, ping_interval=5.0, silence=15.0, now=0.0)
    assert hb.next_timer() == 5.0
    assert hb.tick(5.0) == [SendPing(1)]
    assert hb.tick(7.0) == []


def test_silence_gives_the_session_up_after_three_intervals_without_a_frame() -> None:
    hb = Heartbeat(beat=None, ping_interval=5.0, silence=15.0, now=0.0)
    hb.tick(5.0)
    hb.heard(5.001)  # the Pong
    hb.tick(10.0)
    hb.tick(15.0)
    assert hb.tick(20.0) == [SendPing(4)]  # 14.999 s without a frame: not yet
    assert hb.tick(20.002) == [LinkLost("no word from the coordinator for 15 s")]


def test_a_tick_a_ping_interval_and_a_second_late_means_we_were_frozen() -> None:
    hb = Heartbeat(beat=0.2, ping_interval=5.0, silence=15.0, now=0.0)
    assert hb.tick(0.2) == [SendBeat()]
    assert hb.tick(6.4) == [SendPing(1)]  # 6.2 s late by 6.0 s: a loaded loop, not a freeze
    hb.heard(6.4)
    assert hb.tick(13.0) == [LinkLost("frozen for about 7 s")]


def test_a_stalled_connection_is_given_up() -> None:
    hb = Heartbeat(beat=0.2, ping_interval=5.0, silence=15.0, now=0.0)
    assert hb.tick(0.2, stalled=True) == [LinkLost("our frames to the coordinator go unacknowledged (the path is cut)")]


# --- the handshake ------------------------------------------------------------------------------

SECRET = b"s" * 32
NONCE_C, NONCE_A, SESSION = "0c" * 16, "0a" * 16, "5e" * 8


INSTANCE = "0123456789abcdef"
TOKEN = auth.instance_token(SECRET, INSTANCE)


def welcome(key: bytes = SECRET) -> m.Welcome:
    return m.Welcome(session=SESSION, mac=auth.mac(key, auth.COORDINATOR_PROOF, NONCE_A, NONCE_C))


def handshake(then: m.Register | m.Watch | None) -> Handshake:
    """An agent's handshake holds its instance's token only; the controller's, the secret."""
    credential = (auth.Credential.of_instance(INSTANCE, TOKEN) if isinstance(then, m.Register)
                  else auth.Credential.controller(SECRET))
    return Handshake(credential, "192.0.2.1:7000", then, new_token=lambda: NONCE_A)


def test_the_handshake_proves_both_ways_registers_and_ends_with_the_full_membership() -> None:
    register = m.Register(name="kv-1", service="kv", instance=INSTANCE)
    hs = handshake(register)
    # An agent proves itself with its instance's token, not the deployment secret.
    assert hs.receive(m.Challenge(v=m.PROTOCOL_VERSION, nonce=NONCE_C)) == [SendMessage(m.Auth(
        v=m.PROTOCOL_VERSION, nonce=NONCE_A, instance=INSTANCE,
        mac=auth.mac(TOKEN, auth.AGENT_PROOF, NONCE_C, NONCE_A)))]
    assert hs.receive(welcome(TOKEN)) == [SendMessage(register)]
    registered = m.Registered(name="kv-1", addr="100.64.0.2", prefix="100.64.0.0/10", relay_port=7001, beat=0.2)
    assert hs.receive(registered) == []
    assert hs.receive(m.Pong(seq=1)) == []  # others may come meanwhile
    members = m.Members(hosts={"kv-1": "100.64.0.2"}, services={}, version=3)
    assert hs.receive(members) == [Joined(SESSION, registered, members)]
    assert hs.state is HandshakeState.DONE
    with pytest.raises(IllegalTransition, match="event 'members' is not legal for the agent in state 'done'"):
        hs.receive(members)


def test_a_peer_without_the_secret_is_not_our_coordinator() -> None:
    hs = handshake(None)
    hs.receive(m.Challenge(v=m.PROTOCOL_VERSION, nonce=NONCE_C))
    with pytest.raises(HandshakeRefused, match="the peer at 192.0.2.1:7000 does not hold the deployment secret"):
        hs.receive(welcome(b"x" * 32))


def test_a_refusal_and_a_broken_protocol_say_which() -> None:
    hs = handshake(None)
    with pytest.raises(ProtocolError, match="expected a challenge, got welcome"):
        hs.receive(welcome())
    hs = handshake(None)
    hs.receive(m.Challenge(v=m.PROTOCOL_VERSION, nonce=NONCE_C))
    with pytest.raises(HandshakeRefused, match="refused us: protocol version 2 not supported"):
        hs.receive(m.Refused(reason="protocol version 2 not supported (coordinator speaks 3)"))


def test_authentication_alone_and_the_controllers_watch() -> None:
    hs = handshake(None)
    hs.receive(m.Challenge(v=m.PROTOCOL_VERSION, nonce=NONCE_C))
    assert hs.receive(welcome()) == [Authenticated(welcome())]
    hs = handshake(m.Watch())
    hs.receive(m.Challenge(v=m.PROTOCOL_VERSION, nonce=NONCE_C))
    assert hs.receive(welcome()) == [SendMessage(m.Watch())]
    with pytest.raises(HandshakeRefused, match="refused to be watched: busy"):
        hs.receive(m.Error(ref="", reason="busy"))

"""Replay: a proof captured on the way is good nowhere else (issue 14, part 3). The relay's
single-use proofs are tested in test_relay_limits.py (test_a_replayed_relay_proof_is_refused)."""

from __future__ import annotations

from test_broker import register, sent, tokens

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Close, Timeouts

SECRET = bytes(range(32))


def broker() -> Broker:
    return Broker(SECRET, prefix="100.64.0.0/24", timeouts=Timeouts(broker=3.0), new_token=tokens())


def captured_observe(b: Broker, cid: int, session: str, ticket: str, endpoint: str) -> m.Observe:
    """An agent's real rendezvous: challenge, then its Observe (which an eavesdropper records)."""
    challenge = sent(b.connection_made(cid, endpoint))[0]
    frame = m.Observe(v=m.PROTOCOL_VERSION, session=session, ticket=ticket,
                      mac=auth.mac(SECRET, auth.OBSERVE_PROOF, challenge.nonce, session, ticket))
    assert sent(b.message_received(cid, frame, 0.0)) == [m.Observed(endpoint=endpoint)]
    return frame


def test_a_captured_observe_replayed_from_another_address_is_refused():
    """Before: the replay, from the attacker's address, made the next client punch toward it."""
    b = broker()
    session_a, _ = register(b, 1, "web", "198.18.1.1:40000")
    _, addr_kv = register(b, 2, "kv", "198.18.1.2:40000")
    frame = captured_observe(b, 11, session_a, "aaaa0001", "198.18.1.1:50001")
    b.connection_lost(11)  # the agent's rendezvous connection ends; the ticket goes with it

    b.connection_made(66, "203.0.113.66:4444")  # the attacker, with a challenge of its own
    actions = b.message_received(66, frame, 0.1)
    assert sent(actions) == [m.Refused(reason="rendezvous refused: unknown session or wrong proof")]
    assert Close(66, "rendezvous refused: unknown session or wrong proof") in actions
    assert b.refusals["observe-proof"] == 1
    # Nothing of the replay is left to broker a connect with.
    connect = m.Connect(conn="c0ffee01", dst_addr=addr_kv, dst_port=80, src_port=1, ticket="aaaa0001")
    assert sent(b.message_received(1, connect, 0.2)) == [m.Error(ref="c0ffee01", reason="unknown ticket")]


def test_the_same_observe_replayed_on_its_own_connection_again_is_refused():
    b = broker()
    session_a, _ = register(b, 1, "web")
    frame = captured_observe(b, 11, session_a, "aaaa0001", "198.18.1.1:50001")
    refused = sent(b.message_received(11, frame, 0.1))  # a rendezvous connection takes one Observe
    assert refused[0].TYPE == "refused"


def test_a_ticket_id_that_served_is_refused_again_even_with_a_fresh_proof():
    b = broker()
    session_a, _ = register(b, 1, "web", "198.18.1.1:40000")
    session_b, addr_b = register(b, 2, "kv", "198.18.1.2:40000")
    captured_observe(b, 11, session_a, "aaaa0001", "198.18.1.1:50001")
    captured_observe(b, 12, session_b, "bbbb0001", "198.18.1.2:50002")
    b.message_received(1, m.Connect(conn="c0ffee01", dst_addr=addr_b, dst_port=80, src_port=1, ticket="aaaa0001"), 0)
    punches = sent(b.message_received(2, m.Accept(conn="c0ffee01", ticket="bbbb0001"), 0.001))
    assert [p.TYPE for p in punches] == ["punch", "punch"]
    # The same id on a new connection, with a proof made for it (only a holder of the secret can):
    challenge = sent(b.connection_made(13, "198.18.1.1:50003"))[0]
    again = m.Observe(v=m.PROTOCOL_VERSION, session=session_a, ticket="aaaa0001",
                      mac=auth.mac(SECRET, auth.OBSERVE_PROOF, challenge.nonce, session_a, "aaaa0001"))
    assert sent(b.message_received(13, again, 0.01)) == [
        m.Refused(reason="rendezvous refused: ticket already used (a ticket id serves once)")]
    assert b.refusals["ticket-reused"] == 1


def test_an_observe_of_another_protocol_version_is_refused_naming_both():
    b = broker()
    session_a, _ = register(b, 1, "web")
    b.connection_made(11, "198.18.1.1:50001")
    old = m.Observe(v=3, session=session_a, ticket="aaaa0001", mac="00" * 32)
    reason = sent(b.message_received(11, old, 0.0))[0].reason
    assert reason == (f"protocol version 3 not supported (coordinator speaks {m.PROTOCOL_VERSION}): "
                      "upgrade boxer on both sides")

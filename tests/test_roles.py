"""Per-role credentials (issue 14, part 4): an instance's credential is bound to its instance id
and may do nothing only the controller may; each insider action is refused and logged. And the
app's environment holds none of the agent's credentials."""

from __future__ import annotations

import logging

import pytest
from test_broker import login, register, sent, tokens

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker, Timeouts
from boxer.nat_traversal.wire import FrameDecoder, encode_frame

SECRET = bytes(range(32))
VICTIM, MALLORY = "1111aaaa", "2222bbbb"


def broker() -> Broker:
    return Broker(SECRET, prefix="100.64.0.0/24", timeouts=Timeouts(broker=3.0), new_token=tokens())


def login_as_instance(b: Broker, cid: int, instance: str, key: bytes | None = None,
                      endpoint: str = "198.18.1.66:40000") -> m.Message:
    challenge = sent(b.connection_made(cid, endpoint))[0]
    nonce = "cd" * 16
    key = auth.instance_token(SECRET, instance) if key is None else key
    return sent(b.message_received(cid, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, instance=instance,
                                               mac=auth.mac(key, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0))[0]


def test_an_instance_authenticates_with_its_own_token_and_the_coordinator_proves_itself():
    b = broker()
    challenge = sent(b.connection_made(1, "198.18.1.1:40000"))[0]
    token = auth.instance_token(SECRET, VICTIM)
    nonce = "ab" * 16
    welcome = sent(b.message_received(1, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, instance=VICTIM, mac=auth.mac(
        token, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0))[0]
    assert welcome.mac == auth.mac(token, auth.COORDINATOR_PROOF, nonce, challenge.nonce)
    registered = sent(b.message_received(1, m.Register(name="web", service="web", instance=VICTIM), 0.0))[0]
    assert isinstance(registered, m.Registered)


def test_another_instances_token_does_not_authenticate():
    b = broker()
    refused = login_as_instance(b, 1, VICTIM, key=auth.instance_token(SECRET, MALLORY))
    assert refused == m.Refused(reason=f"authentication failed: wrong credential for instance {VICTIM}")


def test_an_instance_cannot_take_another_instances_name(caplog):
    """Before: any holder of the secret re-registered with the victim's instance id and took its
    name (and its address, and its connections)."""
    b = broker()
    login_as_instance(b, 1, VICTIM, endpoint="198.18.1.1:40000")
    b.message_received(1, m.Register(name="db", service="db", instance=VICTIM), 0.0)
    login_as_instance(b, 2, MALLORY)
    with caplog.at_level(logging.WARNING):
        error = sent(b.message_received(2, m.Register(name="db", service="db", instance=VICTIM), 0.0))
    assert error == [m.Error(ref="register", reason=f"this session's credential is instance {MALLORY}'s; it "
                                                    f"cannot register instance {VICTIM}")]
    assert b.members() == {"db": "100.64.0.1"} and b.instances[0].cid == 1
    assert b.refusals["role-register"] == 1
    assert f"authenticated as instance {MALLORY} tried to register as {VICTIM}" in caplog.text


@pytest.mark.parametrize("action, message", [
    ("watch", m.Watch()),
    ("declare", m.Declare(services={"evil": 900})),
    ("drain", m.Drain(instance=VICTIM)),
    ("stop", m.Stop(instance=VICTIM, reason="pwned")),
])
def test_only_the_controllers_credential_may(action, message, caplog):
    b = broker()
    login_as_instance(b, 1, VICTIM, endpoint="198.18.1.1:40000")
    b.message_received(1, m.Register(name="db", service="db", instance=VICTIM), 0.0)
    b.flush_members()
    login_as_instance(b, 2, MALLORY)
    b.message_received(2, m.Register(name="mallory", service="mallory", instance=MALLORY), 0.0)
    b.flush_members()
    with caplog.at_level(logging.WARNING):
        actions = b.message_received(2, message, 0.0)
    assert [(a.cid, a.message) for a in actions] == [(2, m.Error(
        ref=action, reason=f"only the controller may {action}: this session authenticated as instance {MALLORY}"))]
    assert b.refusals[f"role-{action}"] == 1
    assert f"(instance {MALLORY}) asked to {action}" in caplog.text
    assert "evil" not in b.services.vips() and not b.instances[0].draining


def test_the_controllers_credential_may_do_all_of_it():
    b = broker()
    login_as_instance(b, 1, VICTIM, endpoint="198.18.1.1:40000")
    b.message_received(1, m.Register(name="db", service="db", instance=VICTIM), 0.0)
    login(b, 9)  # the deployment secret itself
    assert isinstance(sent(b.message_received(9, m.Watch(), 0.0))[0], m.Snapshot)
    assert b.message_received(9, m.Declare(services={"api": 5}), 0.0) == []
    assert sent(b.message_received(9, m.Drain(instance=VICTIM), 0.0)) == [m.Drain(instance=VICTIM)]
    assert sent(b.message_received(9, m.Stop(instance=VICTIM), 0.0)) == [m.Stop(instance=VICTIM)]


def test_legacy_register_with_the_secret_still_works():
    assert register(broker(), 1, "kv")[1] == "100.64.0.1"


def test_the_apps_environment_holds_no_credential(monkeypatch):
    from boxer.agent.child import child_environment

    base = {"PATH": "/usr/bin", "HOME": "/root", "BOXER_SECRET_FILE": "/run/boxer/secret", "BOXER_SECRET": "ab" * 16,
            "BOXER_INSTANCE_TOKEN": "cd" * 16, "BOXER_INSTANCE_TOKEN_FILE": "/tmp/t", "AWS_ACCESS_KEY_ID": "AKIA...", "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_SESSION_TOKEN": "y", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001", "AWS_REGION": "eu-west-1"}
    env = child_environment(base, agent_sock="/run/boxer/a.sock", name="web", addr="100.64.0.1",
                            prefix="100.64.0.0/10", wake_addr="@w")
    assert not {k for k in env if "SECRET" in k or "TOKEN" in k or (k.startswith("AWS_") and k != "AWS_REGION")}
    assert env["PATH"] == "/usr/bin" and env["AWS_REGION"] == "eu-west-1" and env["BOXER_NAME"] == "web"


# --- protocol 5: agents hold their token and their connections' keys, never the secret ----------

def observe_as(b: Broker, cid: int, session: str, ticket: str, key: bytes) -> m.Message:
    challenge = sent(b.connection_made(cid, f"198.18.1.1:{50000 + cid}"))[0]
    return sent(b.message_received(cid, m.Observe(v=m.PROTOCOL_VERSION, session=session, ticket=ticket, mac=auth.mac(
        key, auth.OBSERVE_PROOF, challenge.nonce, session, ticket)), 0.0))[0]


def _instance(b: Broker, cid: int, instance: str, name: str) -> str:
    welcome = login_as_instance(b, cid, instance, endpoint=f"198.18.1.{cid}:40000")
    assert isinstance(welcome, m.Welcome)
    b.message_received(cid, m.Register(name=name, service=name, instance=instance), 0.0)
    b.flush_members()
    return welcome.session


def test_an_instances_observe_proofs_are_keyed_by_its_token():
    b = broker()
    session = _instance(b, 1, VICTIM, "db")
    assert observe_as(b, 11, session, "aaaa0001", auth.instance_token(SECRET, VICTIM)) == m.Observed(
        endpoint="198.18.1.1:50011")
    refused = m.Refused(reason="rendezvous refused: unknown session or wrong proof")
    assert observe_as(b, 12, session, "aaaa0002", auth.instance_token(SECRET, MALLORY)) == refused
    assert b.refusals["observe-proof"] == 1


TOKEN_A, TOKEN_B = auth.instance_token(SECRET, VICTIM), auth.instance_token(SECRET, MALLORY)


def test_both_agents_of_a_connection_get_its_key_and_a_reused_connection_id_gets_another():
    b = broker()
    session_a, session_b = _instance(b, 1, VICTIM, "web"), _instance(b, 2, MALLORY, "kv")
    keys = []
    for n in (1, 2):
        observe_as(b, 10 + n, session_a, f"aaaa000{n}", TOKEN_A)
        observe_as(b, 20 + n, session_b, f"bbbb000{n}", TOKEN_B)
        b.message_received(1, m.Connect(conn="c0ffee01", dst_addr="100.64.0.2", dst_port=80, src_port=1,
                                        ticket=f"aaaa000{n}"), 0.0)
        client, server = sent(b.message_received(2, m.Accept(conn="c0ffee01", ticket=f"bbbb000{n}"), 0.0))
        assert client.salt == server.salt
        assert client.key_for(TOKEN_A) == server.key_for(TOKEN_B) == auth.connection_key(SECRET, "c0ffee01",
                                                                                           client.salt)
        keys.append(client.key_for(TOKEN_A))
    assert keys[0] != keys[1]  # the same id, brokered again: another salt, another key
    assert "key=" not in repr(client)  # never in a log line


# --- protocol 6: the key crosses the unencrypted session wrapped for its receiver ----------------

def on_the_wire(msg: m.Message) -> m.Message:
    """The message as a reader of the session decodes it from the frame's bytes."""
    frames = FrameDecoder()
    frames.receive_data(encode_frame(msg.to_wire()))
    wire = frames.next_frame()
    assert wire is not None
    return m.decode(wire)


def _captured(b: Broker, fast: bool) -> tuple[m.Punch, m.Punch | m.Incoming]:
    """The client's Punch and the server's Punch (slow path) or Incoming (fast path: the server
    deposited an incoming ticket), as frames an on-path reader of the two sessions records."""
    session_a, session_b = _instance(b, 1, VICTIM, "web"), _instance(b, 2, MALLORY, "kv")
    observe_as(b, 11, session_a, "aaaa0001", TOKEN_A)
    challenge = sent(b.connection_made(21, "198.18.1.2:50021"))[0]
    b.message_received(21, m.Observe(v=m.PROTOCOL_VERSION, session=session_b, ticket="bbbb0001",
                                     purpose="incoming" if fast else "outgoing",
                                     mac=auth.mac(TOKEN_B, auth.OBSERVE_PROOF, challenge.nonce, session_b,
                                                  "bbbb0001")), 0.0)
    frames = sent(b.message_received(1, m.Connect(conn="c0ffee01", dst_addr="100.64.0.2", dst_port=80,
                                                  src_port=1, ticket="aaaa0001"), 0.0))
    if not fast:
        frames = sent(b.message_received(2, m.Accept(conn="c0ffee01", ticket="bbbb0001"), 0.0))
    client, server = (on_the_wire(f) for f in frames)
    assert isinstance(client, m.Punch) and isinstance(server, m.Incoming if fast else m.Punch)
    return client, server


@pytest.mark.parametrize("fast", [False, True], ids=["punch", "fast-path-incoming"])
def test_a_captured_punch_or_incoming_does_not_carry_the_connections_key(fast):
    """Before: Punch and Incoming carried the key itself, and a reader of either session could
    make both agents' proofs and the relay's for that connection."""
    client, server = _captured(broker(), fast)
    assert server.wrapped_key is not None and server.salt == client.salt
    key = auth.connection_key(SECRET, "c0ffee01", client.salt)
    assert key.hex() not in (client.wrapped_key, server.wrapped_key)
    assert client.wrapped_key != server.wrapped_key  # each wrapped for its own receiver
    server_punch = m.Punch(conn=server.conn, role="server", peer="198.18.1.1:50011", ticket="bbbb0001",
                           wrapped_key=server.wrapped_key, salt=server.salt) if fast else server
    assert isinstance(server_punch, m.Punch)
    assert client.key_for(TOKEN_A) == server_punch.key_for(TOKEN_B) == key  # both sides hold the same key
    # Another instance's token (an insider's, reading a session) unwraps garbage: proofs the peer refuses.
    assert client.key_for(TOKEN_B) != key and server_punch.key_for(TOKEN_A) != key
    third = auth.instance_token(SECRET, "3333cccc")
    assert client.key_for(third) != key and server_punch.key_for(third) != key


def test_wrapping_is_its_own_inverse_and_bound_to_conn_and_salt():
    key = auth.connection_key(SECRET, "c0ffee01", "5a170001")
    wrapped = auth.wrap_connection_key(TOKEN_A, key, "c0ffee01", "5a170001")
    assert len(wrapped) == 32 and wrapped != key
    assert auth.unwrap_connection_key(TOKEN_A, wrapped, "c0ffee01", "5a170001") == key
    assert auth.unwrap_connection_key(TOKEN_A, wrapped, "c0ffee02", "5a170001") != key
    assert auth.unwrap_connection_key(TOKEN_A, wrapped, "c0ffee01", "5a170002") != key
    with pytest.raises(ValueError, match="a connection key is 32 bytes, got 31"):
        auth.wrap_connection_key(TOKEN_A, key[:31], "c0ffee01", "5a170001")


@pytest.mark.parametrize("env, message", [
    ({}, "boxer: no credential for this instance: give it its token (--token-file or BOXER_INSTANCE_TOKEN, with "
         "--instance-id) as a controller issues it, or the deployment secret"),
    ({"BOXER_INSTANCE_TOKEN": "ab" * 16, "BOXER_INSTANCE_ID": "0123abcd"},
     "boxer: the instance token in BOXER_INSTANCE_TOKEN must be 64 hex digits"),
    ({"BOXER_INSTANCE_TOKEN": "ab" * 32}, "boxer: an instance token is bound to one instance id: pass --instance-id"),
])
def test_boxer_run_without_a_usable_credential_says_which_in_one_line(env, message, tmp_path):
    import os
    import subprocess
    import sys

    marker = tmp_path / "started"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BOXER_SECRET", "BOXER_INSTANCE"))}
    proc = subprocess.run([sys.executable, "-m", "boxer", "run", "--coordinator", "127.0.0.1:9", "--", "touch",
                           str(marker)], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert not marker.exists()

"""The proofs two agents exchange on a punched connection are keyed by that connection's key
(the coordinator hands it to both in Punch/Incoming): a peer that holds another connection's key
is refused before the app sees a byte. The agent's real PathOpener (boxer/agent/paths.py) opens
the direct path to a peer played here by a listening socket on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest

from boxer.agent.paths import PathOpener
from boxer.agent.punch import PunchError
from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.client import Path, Timeouts

SECRET = bytes(range(32))
CONN, SALT = "c0ffee01", "5a170001"
KEY = auth.connection_key(SECRET, CONN, SALT)
TOKEN = auth.instance_token(SECRET, "1111aaaa")  # the client agent's own


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def client_against(peer_key: bytes, token: bytes = TOKEN) -> tuple[object, bytes]:
    """The client agent's outcome ((socket, path) or PunchError) against a server that proves
    itself with `peer_key`, and the proof the client sent it. The Punch brings the key wrapped
    for the client (under TOKEN), which unwraps it with `token`."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    punch = m.Punch(conn=CONN, role="client", peer=f"127.0.0.1:{listener.getsockname()[1]}", ticket="aaaa0001",
                    wrapped_key=auth.wrap_connection_key(TOKEN, KEY, CONN, SALT).hex(), salt=SALT)
    opener = PathOpener(lambda: None, token, Timeouts(punch=1.5), Counter())  # no relay: the direct path alone

    async def server() -> bytes:
        sock, _ = await loop.sock_accept(listener)
        with sock:
            await loop.sock_sendall(sock, auth.connection_proof(peer_key, CONN, "server"))
            received = b""
            while len(received) < auth.CONNECTION_PROOF_SIZE:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 64), 2.0)
                if not chunk:
                    break
                received += chunk
            return received

    try:
        outcome, proof = await asyncio.gather(opener.open(punch, free_port()), server(), return_exceptions=True)
    finally:
        listener.close()
    if isinstance(outcome, tuple):
        outcome[0].close()
    assert isinstance(proof, bytes), proof
    return outcome, proof


def test_a_peer_holding_the_connections_key_is_connected() -> None:
    outcome, proof = asyncio.run(client_against(KEY))
    assert isinstance(outcome, tuple) and outcome[1] is Path.DIRECT, outcome
    assert proof == auth.connection_proof(KEY, CONN, "client")  # what the server checks in turn


@pytest.mark.parametrize("wrong", ["another connection's", "another salt's", "the deployment secret"])
def test_a_peer_proof_made_with_another_key_is_refused(wrong: str) -> None:
    other = {"another connection's": auth.connection_key(SECRET, "c0ffee02", SALT),
             "another salt's": auth.connection_key(SECRET, CONN, "5a17ffff"),
             "the deployment secret": SECRET}[wrong]
    outcome, _ = asyncio.run(client_against(other))
    assert isinstance(outcome, PunchError) and outcome.errno_name == "ECONNABORTED", outcome


def test_a_punch_unwrapped_with_another_instances_token_proves_nothing_to_the_peer() -> None:
    """What an insider who read another agent's Punch off the wire gets: the wrapped key,
    which its own token unwraps to garbage. The peer (holding the real key) refuses it."""
    outcome, proof = asyncio.run(client_against(KEY, token=auth.instance_token(SECRET, "2222bbbb")))
    assert isinstance(outcome, PunchError) and outcome.errno_name == "ECONNABORTED", outcome
    assert proof != auth.connection_proof(KEY, CONN, "client")  # and its own proof is refused in turn

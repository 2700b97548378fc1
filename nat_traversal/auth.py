"""The deployment secret, the credentials derived from it, and the proofs built from them.

Only the coordinator, the relay and the controller hold the deployment secret. Everyone else
holds a key derived from it, good for one thing:

  - an instance's token, HMAC(secret, "instance:" + id): its agent's credential on control
    sessions (mutual challenge-response over fresh nonces) and on its rendezvous connections
    (Observe proofs over the connection's challenge, the session and the ticket). The
    controller issues it; the coordinator derives it again from the id in Auth;
  - a connection's key, HMAC(secret, "conn:" + conn + "|" + salt): handed to both agents of one
    connection in Punch/Incoming, it keys the 32-byte proofs they exchange on the punched or
    relayed connection and their relay proofs. The salt is the coordinator's, fresh per brokered
    connect and sent to the relay in the Relay frame: the relay derives the key, and an insider
    who names a connection id it saw go by (its own Connect with the same id) gets a key of
    another salt, good for nothing on that connection.

No key crosses the wire in the clear. Control sessions are not encrypted, so the coordinator
sends each agent a connection's key wrapped for that agent (`wrap_connection_key`): XORed with
a pad HMAC(receiver's token, "boxer-v6-conn-key-wrap" | conn | salt). The pad is a PRF output
only the receiver (and the coordinator) can compute, and never serves twice: the salt is fresh
per connect, and each (conn, salt) has one key. No integrity: a flipped bit gives the two agents
different keys, so their proofs fail and the connect fails, which an on-path attacker able to
alter frames can bring about anyway (it can inject a ConnectFailed); it never learns the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import AnyStr

AGENT_PROOF = b"boxer-v1-agent"
COORDINATOR_PROOF = b"boxer-v1-coordinator"
OBSERVE_PROOF = b"boxer-v3-observe"  # v2: bound to the connection's challenge; v3: keyed by the session's credential
CONNECTION_PROOF = b"boxer-v2-connection"  # v2: keyed by the connection's key
RELAY_PROOF = b"boxer-v2-relay"  # v2: keyed by the connection's key, over its salt too
CONNECTION_KEY = b"conn:"
KEY_WRAP = b"boxer-v6-conn-key-wrap"  # the pad that hides a connection's key from all but its receiver
CONNECTION_PROOF_SIZE = 32
TOKEN_SIZE = 32  # bytes of an instance token (a SHA-256 HMAC)

# Where a process finds the deployment secret, and an instance its token (`boxer run`). A
# process that must not hold the secret (an instance's agent, the lab's zygote) is started
# without SECRET_ENV.
SECRET_ENV = ("BOXER_SECRET", "BOXER_SECRET_FILE")
TOKEN_ENV = "BOXER_INSTANCE_TOKEN"
TOKEN_FILE_ENV = "BOXER_INSTANCE_TOKEN_FILE"


class SecretError(Exception):
    """The deployment secret is missing or malformed."""


def load_secret(path: str | None = None, value: str | None = None) -> bytes:
    """The secret from a file (preferred: it keeps the secret out of `ps`) or a hex string."""
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise SecretError(f"cannot read the deployment secret from {path}: {exc.strerror}") from None
    if not value:
        raise SecretError(
            "no deployment secret: pass --secret-file (or set BOXER_SECRET_FILE); inside the lab, "
            "`boxer lab exec` sets it for you"
        )
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise SecretError("the deployment secret must be hex digits (e.g. `openssl rand -hex 32`)") from None
    if len(secret) < 16:
        raise SecretError(f"the deployment secret is {len(secret)} bytes; use at least 16")
    return secret


def instance_token(secret: bytes, instance: str) -> bytes:
    """The credential of one instance: it authenticates that instance id and no other, so whoever
    holds it (the instance's agent) cannot take another instance's name, nor act as the
    controller. Derived, so the coordinator needs no table of them; issued by whoever holds the
    deployment secret (the controller, or `boxer run` given the secret)."""
    return hmac.new(secret, b"instance:" + instance.encode(), hashlib.sha256).digest()


def load_token(path: str | None = None, value: str | None = None) -> bytes:
    """An instance token from a file or a hex string (as `instance_token(...).hex()` gives)."""
    where = "BOXER_INSTANCE_TOKEN"
    if path:
        where = path
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise SecretError(f"cannot read the instance token from {path}: {exc.strerror}") from None
    try:
        token = bytes.fromhex(value or "")
    except ValueError:
        token = b""
    if len(token) != TOKEN_SIZE:
        raise SecretError(f"the instance token in {where} must be {2 * TOKEN_SIZE} hex digits (the controller "
                          "issues it, or `boxer run` derives it given the deployment secret)")
    return token


@dataclass(frozen=True)
class Credential:
    """What a control session authenticates with: an instance's token and that instance's id,
    or (instance None) the deployment secret itself: the controller's role."""

    key: bytes = field(repr=False)
    instance: str | None = None

    @classmethod
    def controller(cls, secret: bytes) -> Credential:
        return cls(secret, None)

    @classmethod
    def of_instance(cls, instance: str, token: bytes) -> Credential:
        return cls(token, instance)

    @classmethod
    def derived(cls, secret: bytes, instance: str) -> Credential:
        """An instance's credential made by whoever holds the secret (the controller, or
        `boxer run` given it): the secret itself is not kept."""
        return cls(instance_token(secret, instance), instance)


def connection_key(secret: bytes, conn: str, salt: str) -> bytes:
    """The key of one brokered connection (both agents get it in Punch/Incoming; the relay
    derives it from the Relay frame's conn and salt)."""
    return hmac.new(secret, CONNECTION_KEY + conn.encode() + b"|" + salt.encode(), hashlib.sha256).digest()


def wrap_connection_key(token: bytes, key: bytes, conn: str, salt: str) -> bytes:
    """A connection's key as the coordinator sends it to one agent (Punch/Incoming `wrapped_key`):
    XORed with a pad keyed by that agent's token (`token`: the key its session authenticated
    with), so a reader of the session learns nothing of the key. Its own inverse."""
    if len(key) != CONNECTION_PROOF_SIZE:
        raise ValueError(f"a connection key is {CONNECTION_PROOF_SIZE} bytes, got {len(key)}")
    pad = hmac.new(token, KEY_WRAP + b"|" + conn.encode() + b"|" + salt.encode(), hashlib.sha256).digest()
    return (int.from_bytes(key, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(key), "big")


def unwrap_connection_key(token: bytes, wrapped: bytes, conn: str, salt: str) -> bytes:
    """The connection's key from what the coordinator sent this agent. With another instance's
    token it is 32 bytes of garbage: every proof made with it is refused."""
    return wrap_connection_key(token, wrapped, conn, salt)


def relay_proof(key: bytes, conn: str, salt: str, role: str) -> str:
    """The mac of a Relay frame: keyed by the connection's key, so only its two agents (and
    the relay, which derives the key) can make it."""
    return mac(key, RELAY_PROOF, conn, salt, role)


def new_token(nbytes: int = 16) -> str:
    return secrets.token_hex(nbytes)


def mac(secret: bytes, purpose: bytes, *parts: str) -> str:
    message = purpose + b"|" + b"|".join(p.encode() for p in parts)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def connection_proof(key: bytes, conn: str, role: str) -> bytes:
    """The 32 bytes each side writes first on a punched connection (before any app byte),
    keyed by the connection's key (`connection_key`)."""
    message = CONNECTION_PROOF + b"|" + conn.encode() + b"|" + role.encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def verify(expected: AnyStr, got: AnyStr) -> bool:
    """Timing-safe equality of two proofs (hex MACs as str, or raw digests as bytes)."""
    return hmac.compare_digest(expected, got)


def random_secret_hex() -> str:
    return os.urandom(32).hex()

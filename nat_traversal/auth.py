"""The deployment secret and the proofs built from it.

Nothing secret ever crosses the wire: each side proves it holds the secret with an HMAC over
fresh nonces (mutual challenge-response for control sessions), over the connection's challenge,
the session and the ticket for rendezvous connections, and over the connection id and role on
every punched connection.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import AnyStr

AGENT_PROOF = b"boxer-v1-agent"
COORDINATOR_PROOF = b"boxer-v1-coordinator"
OBSERVE_PROOF = b"boxer-v2-observe"  # v2: bound to the connection's challenge nonce
CONNECTION_PROOF = b"boxer-v1-connection"
RELAY_PROOF = b"boxer-v1-relay"
CONNECTION_PROOF_SIZE = 32


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


def new_token(nbytes: int = 16) -> str:
    return secrets.token_hex(nbytes)


def mac(secret: bytes, purpose: bytes, *parts: str) -> str:
    message = purpose + b"|" + b"|".join(p.encode() for p in parts)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def connection_proof(secret: bytes, conn: str, role: str) -> bytes:
    """The 32 bytes each side writes first on a punched connection (before any app byte)."""
    message = CONNECTION_PROOF + b"|" + conn.encode() + b"|" + role.encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def verify(expected: AnyStr, got: AnyStr) -> bool:
    """Timing-safe equality of two proofs (hex MACs as str, or raw digests as bytes)."""
    return hmac.compare_digest(expected, got)


def random_secret_hex() -> str:
    return os.urandom(32).hex()

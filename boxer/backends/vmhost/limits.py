"""The host daemon's bounds (on connections that have not authenticated, on what it keeps of an
instance's output), apart from the daemon so that `boxer host serve --help` shows them without
importing it (HostDaemon's parameters)."""

__all__ = ["AUTH_DEADLINE", "DEFAULT_CAP", "UNAUTHENTICATED", "UNAUTHENTICATED_PER_SOURCE"]

DEFAULT_CAP = 64 * 1024 * 1024  # bytes of one instance name's current log file on a host (output.py)

# The port is reachable from the controller's VM, and in practice from whatever else the security
# group lets in: anyone may connect. A connection that has not authenticated is the only thing
# a stranger can make the daemon hold, so it is bounded in time, in bytes (protocol.py's
# MAX_UNAUTHENTICATED) and in number, as the coordinator's (nat_traversal/limits.py).
AUTH_DEADLINE = 5.0  # seconds from the accept to a valid auth, however the bytes trickle in
# Unauthenticated connections from one address: past it a new one is closed at once. The
# controller opens one connection per host, one at a time, so it never needs more than one.
UNAUTHENTICATED_PER_SOURCE = 8
# ... and from everyone: past it the oldest is closed for the new one, so a flood from many
# addresses delays the controller (by its next reconnect) instead of locking it out.
UNAUTHENTICATED = 64

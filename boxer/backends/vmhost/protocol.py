"""The host daemon's protocol, sans-IO: the controller asks a vm host to start and stop instances.

One TCP connection from the controller to `boxer host serve`, length-prefixed JSON frames
(boxer.nat_traversal.wire, as between agents and the coordinator). Neither class here touches a
socket: each is fed the bytes that arrived and says what to send and what happened, so the tests
drive both ends byte by byte.

    daemon -> controller  hello    {v, nonce, host, slots}
    controller -> daemon  auth     {v, nonce, proof}          proof = HMAC(token, controller|sn|cn)
    daemon -> controller  welcome  {proof, running, exits}    proof = HMAC(token, host|sn|cn)
                          refused  {reason}                   (then the daemon closes)
    controller -> daemon  start    {ref, event}               event: the Lambda event of the instance
    daemon -> controller  started  {ref, pid} | start_failed {ref, reason}
    controller -> daemon  stop     {ref, grace}
    daemon -> controller  exited   {ref, status, reason}      whenever an instance ends, stopped or not
    controller -> daemon  ping     {}   ->   pong {running}
    controller -> daemon  logs     {id, ref, offset}          an instance's output from byte `offset`,
                                                              or its last -offset bytes when negative
    daemon -> controller  log      {id, offset, data, at, size, running, end}   one or more, the last
                                                              with end: data base64, at its write time
                          log_failed {id, reason}

The credential is the *host token*: on AWS a random one terraform keeps in SSM (the hosts may read
that parameter alone; the controller reads it too), in the lab HMAC(deployment secret, "vmhost").
A host is given the token alone (`boxer host serve --token-file`), and a proof shows both ends hold
it without sending it (mutual, over both nonces, so a
recorded exchange is good on no other connection). `start` carries the instance's Lambda event
(boxer.backends.aws_lambda.event) unchanged, so a vm instance gets exactly what a function
instance gets (name, service, env, command, coordinator, its credential's reference), and the two
cannot drift apart.

An instance's output stays on its vm host (the daemon keeps it in a file capped at its
`log_cap`, daemon.py); the controller reads it with `logs`, again from where the last answer
ended to follow it. An answer is at most LOG_REQUEST bytes of output in chunks of at most
LOG_CHUNK (a frame stays far below MAX_FRAME), each cut where the daemon's write times change so
`at` is the time of every line in it; `offset` of the first chunk may be past the one asked for
when that much was rotated away, `size` is how much the instance wrote in all.

Why not gRPC like the control API: the daemon runs on every vm host from `pip install boxer`,
which carries what an instance needs and no grpcio (docs/architecture.md, the extras); the
exchange is a few small messages, and sans-IO keeps it testable and fuzzable like the
coordinator's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.nat_traversal.auth import SecretError, mac
from boxer.nat_traversal.wire import FrameDecoder, FrameError, ProtocolError, encode_frame

__all__ = [
    "DEFAULT_PORT",
    "VERSION",
    "AuthFailed",
    "ClientSession",
    "Exited",
    "HostHello",
    "LogChunk",
    "LogFailed",
    "LogsRequested",
    "Pong",
    "ServerSession",
    "StartFailed",
    "StartRequested",
    "Started",
    "StopRequested",
    "Welcome",
    "host_token",
    "load_host_token",
    "proof",
]

VERSION = 1
DEFAULT_PORT = 7100  # the host daemon's TCP port (terraform: var.vm_host_port)
MAX_FRAME = 256 * 1024  # an event is at most Lambda's async payload (256 KB)
# What anyone may make the daemon hold before it has authenticated: an auth frame is ~200 bytes,
# so a peer without the token costs 4 KiB (and one read) instead of a 256 KiB frame.
MAX_UNAUTHENTICATED = 4096
_NONCE_BYTES = 16
HOST_PROOF = b"boxer-v1-vmhost"
_REF_MAX = 128
LOG_CHUNK = 48 * 1024  # output bytes in one `log` frame: 64 KiB of base64
LOG_REQUEST = 1024 * 1024  # output bytes in one answer to `logs`, however many chunks
LOG_CHUNKS = 1024  # chunks in one answer (a trickling app's output is cut at each write time)
_LOG_DATA = 4 * ((LOG_CHUNK + 2) // 3)  # base64 characters of a full chunk
_OFFSET_MAX = 2 ** 53
_ID_MAX = 2 ** 31


def host_token(secret: bytes) -> bytes:
    """A vm host daemon's credential where none is stored (the lab, lambda-local, outputs of a
    module from before terraform made one): derived from the deployment secret, so the
    controller (which holds the secret) needs no table, and a host holding only the token can
    neither act as the controller towards the coordinator nor as an instance."""
    return hmac.new(secret, b"vmhost", hashlib.sha256).digest()


def load_host_token(path: str) -> bytes:
    """A host token from its file (hex, at least 16 bytes: terraform's and the derived one are
    32). Raises SecretError, whose message never shows the value."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the host token from {path}: {exc.strerror}") from None
    try:
        token = bytes.fromhex(value)
    except ValueError:
        token = b""
    if len(token) < 16:
        raise SecretError(f"the host token in {path} must be at least 32 hex digits (terraform makes one: "
                          "the SSM parameter its vm_host_token_parameter_name output names)")
    return token


def proof(token: bytes, role: str, server_nonce: str, client_nonce: str) -> str:
    """What `role` ("controller" or "host") sends to show it holds the token: over both nonces,
    so it is good on this connection only (the same HMAC as the coordinator's proofs)."""
    return mac(token, HOST_PROOF, role, server_nonce, client_nonce)


class AuthFailed(ProtocolError):
    """The other end does not hold the host token, or speaks another version."""


# -- what happened, as each side sees it --------------------------------------------------------

@dataclass(frozen=True)
class StartRequested:
    ref: str
    event: dict[str, Any]


@dataclass(frozen=True)
class StopRequested:
    ref: str
    grace: float


@dataclass(frozen=True)
class HostHello:
    host: str
    slots: int


@dataclass(frozen=True)
class Welcome:
    host: str
    slots: int
    running: dict[str, int]  # ref -> pid, what runs there now
    exits: list[Exited]  # what ended while no controller was connected


@dataclass(frozen=True)
class Started:
    ref: str
    pid: int


@dataclass(frozen=True)
class StartFailed:
    ref: str
    reason: str


@dataclass(frozen=True)
class LogFailed:
    id: int
    reason: str


@dataclass(frozen=True)
class Exited:
    ref: str
    status: int
    reason: str


@dataclass(frozen=True)
class Pong:
    running: int


@dataclass(frozen=True)
class LogsRequested:
    id: int
    ref: str
    offset: int  # >= 0: from that byte of the instance's output; < 0: its last -offset bytes


@dataclass(frozen=True)
class LogChunk:
    id: int
    offset: int  # where `data` begins in the instance's output
    data: bytes
    at: float  # when its last byte was written (wall clock of the vm host)
    size: int  # the instance's output so far, in all
    running: bool
    end: bool  # the last chunk of this answer


# -- field checks -------------------------------------------------------------------------------

def _kind(value: object) -> str:
    """A message kind for an error line: anyone's `t` may be 256 KiB of text or a deep list, whose
    repr would fill the log (or recurse), so only a short string is quoted."""
    if isinstance(value, str):
        return repr(value[:40])
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    return f"a JSON {type(value).__name__}"


def _text(frame: dict[str, Any], key: str, limit: int = _REF_MAX) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{_kind(frame.get('t'))}: {key} must be a string of 1-{limit} characters")
    return value


def _int(frame: dict[str, Any], key: str, low: int, high: int) -> int:
    value = frame.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{_kind(frame.get('t'))}: {key} must be an integer in {low}..{high}")
    return value


def _number(frame: dict[str, Any], key: str, low: float, high: float) -> float:
    value = frame.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{_kind(frame.get('t'))}: {key} must be a number in {low:g}..{high:g}")
    return float(value)


def _flag(frame: dict[str, Any], key: str) -> bool:
    value = frame.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"{_kind(frame.get('t'))}: {key} must be true or false")
    return value


def _log_chunk(frame: dict[str, Any]) -> LogChunk:
    text = frame.get("data")
    if not isinstance(text, str) or len(text) > _LOG_DATA:
        raise ProtocolError(f"'log': data must be base64 of at most {LOG_CHUNK} bytes")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ProtocolError("'log': data is not base64") from None
    return LogChunk(_int(frame, "id", 0, _ID_MAX), _int(frame, "offset", 0, _OFFSET_MAX), data,
                    _number(frame, "at", 0, 1e11), _int(frame, "size", 0, _OFFSET_MAX),
                    _flag(frame, "running"), _flag(frame, "end"))


def _reason(frame: dict[str, Any]) -> str:
    reason = frame.get("reason")
    return reason[:300] if isinstance(reason, str) else "(no reason given)"


def _proof_matches(expected: str, frame: dict[str, Any]) -> bool:
    """compare_digest raises TypeError on a str with non-ASCII characters (a peer's proof may be
    "\u00e9", or not a string at all): anything but ASCII text is simply a wrong proof."""
    given = frame.get("proof")
    return isinstance(given, str) and given.isascii() and hmac.compare_digest(expected, given)


def _exited(frame: dict[str, Any]) -> Exited:
    return Exited(_text(frame, "ref"), _int(frame, "status", -255, 255), _text(frame, "reason", 1000))


def _new_nonce() -> str:
    return os.urandom(_NONCE_BYTES).hex()


class _Framed:
    def __init__(self) -> None:
        self._decoder = FrameDecoder(MAX_FRAME)
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def _send(self, frame: dict[str, Any]) -> None:
        self._out += encode_frame(frame, MAX_FRAME)

    def _frames(self, data: bytes) -> list[dict[str, Any]]:
        self._decoder.receive_data(data)
        frames = []
        while (frame := self._decoder.next_frame()) is not None:
            frames.append(frame)
        return frames


class ServerSession(_Framed):
    """The daemon's end of one connection. Frames before a valid `auth` other than `auth` are a
    protocol error (the shell closes the connection); a wrong proof is AuthFailed, after the
    `refused` frame was queued."""

    def __init__(self, token: bytes, host: str, slots: int, nonce: str | None = None) -> None:
        super().__init__()
        self._token = token
        self.host = host
        self.slots = slots
        self._nonce = nonce or _new_nonce()
        self.authenticated = False
        self._send({"t": "hello", "v": VERSION, "nonce": self._nonce, "host": host, "slots": slots})

    def receive(self, data: bytes) -> list[StartRequested | StopRequested | LogsRequested | str]:
        """Events: StartRequested, StopRequested, LogsRequested, "authenticated", "ping"
        (answered by `pong`). Before authentication at most MAX_UNAUTHENTICATED bytes are held
        (FrameError beyond)."""
        events: list[StartRequested | StopRequested | LogsRequested | str] = []
        self._decoder.receive_data(data)
        while True:
            if not self.authenticated and self._decoder.buffered > MAX_UNAUTHENTICATED:
                raise FrameError(f"{self._decoder.buffered} bytes before authentication (an auth frame"
                                 f" is ~200; at most {MAX_UNAUTHENTICATED} are held)")
            frame = self._decoder.next_frame()
            if frame is None:
                return events
            kind = frame.get("t")
            if not self.authenticated:
                if kind != "auth":
                    raise ProtocolError(f"expected auth, got {_kind(kind)}")
                self._authenticate(frame)
                events.append("authenticated")
            elif kind == "start":
                event = frame.get("event")
                if not isinstance(event, dict):
                    raise ProtocolError("'start': event must be an object")
                events.append(StartRequested(_text(frame, "ref"), event))
            elif kind == "stop":
                events.append(StopRequested(_text(frame, "ref"), _number(frame, "grace", 0, 3600)))
            elif kind == "ping":
                events.append("ping")
            elif kind == "logs":
                events.append(LogsRequested(_int(frame, "id", 0, _ID_MAX), _text(frame, "ref"),
                                            _int(frame, "offset", -LOG_REQUEST, _OFFSET_MAX)))
            else:
                raise ProtocolError(f"unknown message {_kind(kind)}")

    def _authenticate(self, frame: dict[str, Any]) -> None:
        if type(frame.get("v")) is not int or frame.get("v") != VERSION:
            self._refuse(f"protocol version {_kind(frame.get('v'))} not supported (host daemon speaks {VERSION}):"
                         " upgrade boxer on both sides")
        client_nonce = _text(frame, "nonce", 64)
        expected = proof(self._token, "controller", self._nonce, client_nonce)
        if not _proof_matches(expected, frame):
            self._refuse("authentication failed: wrong host token (is this host from another deployment?)")
        self.authenticated = True
        self._client_nonce = client_nonce

    def _refuse(self, reason: str) -> None:
        self._send({"t": "refused", "reason": reason})
        raise AuthFailed(reason)

    def welcome(self, running: dict[str, int], exits: list[Exited]) -> None:
        """Answer a successful auth (the shell calls it on "authenticated")."""
        self._send({"t": "welcome", "proof": proof(self._token, "host", self._nonce, self._client_nonce),
                    "running": [{"ref": ref, "pid": pid} for ref, pid in running.items()],
                    "exits": [{"ref": e.ref, "status": e.status, "reason": e.reason} for e in exits]})

    def started(self, ref: str, pid: int) -> None:
        self._send({"t": "started", "ref": ref, "pid": pid})

    def start_failed(self, ref: str, reason: str) -> None:
        self._send({"t": "start_failed", "ref": ref, "reason": reason[:1000]})

    def exited(self, exit: Exited) -> None:
        self._send({"t": "exited", "ref": exit.ref, "status": exit.status, "reason": exit.reason[:1000]})

    def pong(self, running: int) -> None:
        self._send({"t": "pong", "running": running})

    def log(self, chunk: LogChunk) -> None:
        """One chunk of an answer to `logs` (at most LOG_CHUNK bytes: longer is a bug here)."""
        if len(chunk.data) > LOG_CHUNK:
            raise ValueError(f"a log chunk of {len(chunk.data)} bytes (at most {LOG_CHUNK})")
        self._send({"t": "log", "id": chunk.id, "offset": chunk.offset,
                    "data": base64.b64encode(chunk.data).decode("ascii"), "at": round(chunk.at, 3),
                    "size": chunk.size, "running": chunk.running, "end": chunk.end})

    def log_failed(self, id: int, reason: str) -> None:
        self._send({"t": "log_failed", "id": id, "reason": reason[:1000]})


class ClientSession(_Framed):
    """The controller's end. `receive` raises AuthFailed when the daemon refuses us or cannot
    prove it holds the token (something else answers on its address)."""

    def __init__(self, token: bytes, nonce: str | None = None) -> None:
        super().__init__()
        self._token = token
        self._nonce = nonce or _new_nonce()
        self._server_nonce: str | None = None
        self.hello: HostHello | None = None
        self.ready = False

    def receive(self, data: bytes) -> list[Welcome | Started | StartFailed | Exited | Pong | LogChunk | LogFailed]:
        events: list[Welcome | Started | StartFailed | Exited | Pong | LogChunk | LogFailed] = []
        for frame in self._frames(data):
            kind = frame.get("t")
            if kind == "refused":
                raise AuthFailed(f"the host daemon refused us: {_reason(frame)}")
            if self.hello is None:
                if kind != "hello":
                    raise AuthFailed(f"not a boxer host daemon (first message {_kind(kind)})")
                if type(frame.get("v")) is not int or frame.get("v") != VERSION:
                    raise AuthFailed(f"host daemon speaks protocol {_kind(frame.get('v'))}, this controller"
                                     f" {VERSION}: upgrade boxer on both sides")
                self._server_nonce = _text(frame, "nonce", 64)
                self.hello = HostHello(_text(frame, "host", 255), _int(frame, "slots", 0, 100_000))
                self._send({"t": "auth", "v": VERSION, "nonce": self._nonce,
                            "proof": proof(self._token, "controller", self._server_nonce, self._nonce)})
            elif not self.ready:
                if kind != "welcome":
                    raise ProtocolError(f"expected welcome, got {_kind(kind)}")
                assert self._server_nonce is not None
                expected = proof(self._token, "host", self._server_nonce, self._nonce)
                if not _proof_matches(expected, frame):
                    raise AuthFailed("the host daemon could not prove it holds the host token")
                running = frame.get("running")
                exits = frame.get("exits")
                if not isinstance(running, list) or not isinstance(exits, list):
                    raise ProtocolError("'welcome': running and exits must be lists")
                self.ready = True
                events.append(Welcome(
                    self.hello.host, self.hello.slots,
                    {_text(r, "ref"): _int(r, "pid", 1, 2**31) for r in running if isinstance(r, dict)},
                    [_exited(e) for e in exits if isinstance(e, dict)]))
            elif kind == "started":
                events.append(Started(_text(frame, "ref"), _int(frame, "pid", 1, 2**31)))
            elif kind == "start_failed":
                events.append(StartFailed(_text(frame, "ref"), _text(frame, "reason", 1000)))
            elif kind == "exited":
                events.append(_exited(frame))
            elif kind == "pong":
                events.append(Pong(_int(frame, "running", 0, 100_000)))
            elif kind == "log":
                events.append(_log_chunk(frame))
            elif kind == "log_failed":
                events.append(LogFailed(_int(frame, "id", 0, _ID_MAX), _text(frame, "reason", 1000)))
            else:
                raise ProtocolError(f"unknown message {_kind(kind)}")
        return events

    def start(self, ref: str, event: dict[str, Any]) -> None:
        self._send({"t": "start", "ref": ref, "event": event})

    def stop(self, ref: str, grace: float) -> None:
        self._send({"t": "stop", "ref": ref, "grace": grace})

    def ping(self) -> None:
        self._send({"t": "ping"})

    def logs(self, id: int, ref: str, offset: int) -> None:
        """Ask for `ref`'s output from byte `offset` (negative: its last -offset bytes, at most
        LOG_REQUEST); the answer is `log` chunks with this `id`, or a `log_failed`."""
        self._send({"t": "logs", "id": id, "ref": ref, "offset": offset})

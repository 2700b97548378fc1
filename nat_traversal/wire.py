"""Framing for the agent <-> coordinator protocol (sans-IO).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one object.
`FrameDecoder` is fed bytes as they arrive and hands out complete frames; it never touches a socket,
so tests feed it a byte at a time.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

# What anyone may send to the coordinator: its guard against a peer that makes it buffer a lot
# (every message to it is small).
MAX_FRAME = 64 * 1024
# What the coordinator may send to its agents and its controller: the full membership, and the
# controller's first snapshot (~300 bytes per instance with its last report), grow with the fleet.
# 64 KiB was reached at about 200 instances.
MAX_DOWNSTREAM_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer broke the protocol. The only error the parsers let escape.

    A plain ProtocolError is about one whole frame (not JSON, not a message we know, a value out
    of range): the stream is still in step, so a receiver that trusts its peer's session (an
    agent, the controller) may skip that frame. FrameError is the framing itself."""


class FrameError(ProtocolError):
    """The stream is out of step (a length beyond the limit): the connection must be closed."""


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"frame holds {name}, which is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ProtocolError(f"frame holds the number {text[:40]}, too large for a float")
    return value


def encode_frame(obj: dict[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > max_frame:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {max_frame}-byte limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> dict[str, Any] | None:
        """The next complete frame, or None if more data is needed."""
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_frame:
            raise FrameError(f"frame length {length} exceeds the {self._max_frame}-byte limit")
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER.size:end])
        del self._buffer[:end]
        try:
            # Python's json takes NaN and Infinity (not JSON) and turns 1e999 into inf; no
            # number of ours is ever infinite, so they are refused here, before any check sees
            # them. ValueError covers JSONDecodeError and integers beyond int's 4300-digit limit;
            # RecursionError, nesting deeper than the interpreter's stack.
            obj = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"frame is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise ProtocolError("frame is nested too deeply") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"frame must hold a JSON object, got {type(obj).__name__}")
        return obj

    @property
    def buffered(self) -> int:
        return len(self._buffer)

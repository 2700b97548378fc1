"""Framing for the agent <-> coordinator protocol (sans-IO).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one object.
`FrameDecoder` is fed bytes as they arrive and hands out complete frames; it never touches a socket,
so tests feed it a byte at a time.
"""

from __future__ import annotations

import json
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
    """The peer broke the protocol. The only error the parsers let escape; the connection is closed."""


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
            raise ProtocolError(f"frame length {length} exceeds the {self._max_frame}-byte limit")
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER.size:end])
        del self._buffer[:end]
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"frame is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"frame must hold a JSON object, got {type(obj).__name__}")
        return obj

    @property
    def buffered(self) -> int:
        return len(self._buffer)

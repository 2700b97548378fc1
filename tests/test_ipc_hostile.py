"""The interposer <-> agent message from a hostile or broken peer: only IpcError comes out of
unpack, and what unpacks packs back to the same message (found by scripts/fuzz.py: a name of
256 bytes without its NUL unpacked, then could not be packed)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxer.agent.ipc import _LAYOUT, MAGIC, SIZE, IpcError, Message, Op


def test_a_name_without_its_nul_is_refused():
    raw = _LAYOUT.pack(MAGIC, Op.RESOLVE, 0, 0, 1, 2, 80, 0, bytes(16), b"a" * 256)
    with pytest.raises(IpcError, match="not NUL-terminated"):
        Message.unpack(raw)
    longest = Message(op=Op.RESOLVE, name="a" * 255)
    assert Message.unpack(longest.pack()) == longest


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=SIZE - 4, max_size=SIZE - 4), st.booleans())
def test_fuzz_unpack_only_raises_ipc_error_and_round_trips(body, magic):
    raw = (MAGIC.to_bytes(4, sys.byteorder) if magic else body[:4]) + body
    try:
        message = Message.unpack(raw[:SIZE])
    except IpcError:
        return
    assert Message.unpack(message.pack()) == message

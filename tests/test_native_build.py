"""The suite's guard against stale C libraries (conftest.stale_native_libraries): an editable
install compiles them once, so a checkout that changes a .c file must be noticed before any test
runs new Python against the old library."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import stale_native_libraries


def _tree(root: Path) -> None:
    for source in ("interposer/sockets.c", "interposer/boxer_proto.h", "boxer/agent/fastpath.c",
                   "boxer/agent/peercheck.h"):
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text("/* */\n")
    for library in ("boxer/libboxer_preload.so", "boxer/libboxer_fastpath.so"):
        (root / library).write_bytes(b"\x7fELF")
        os.utime(root / library, (2_000_000_000, 2_000_000_000))  # built after every source


def test_libraries_newer_than_their_sources_are_not_stale(tmp_path):
    _tree(tmp_path)
    assert stale_native_libraries(str(tmp_path)) == []


def test_a_changed_fast_path_source_makes_only_the_fast_path_stale(tmp_path):
    _tree(tmp_path)
    os.utime(tmp_path / "boxer/agent/peercheck.h", (2_000_000_001, 2_000_000_001))
    assert stale_native_libraries(str(tmp_path)) == ["boxer/libboxer_fastpath.so"]


def test_the_shared_protocol_header_makes_both_stale_and_a_missing_library_is_stale(tmp_path):
    _tree(tmp_path)
    os.utime(tmp_path / "interposer/boxer_proto.h", (2_000_000_001, 2_000_000_001))
    assert stale_native_libraries(str(tmp_path)) == ["boxer/libboxer_preload.so", "boxer/libboxer_fastpath.so"]
    _tree(tmp_path)
    (tmp_path / "boxer/libboxer_preload.so").unlink()
    assert stale_native_libraries(str(tmp_path)) == ["boxer/libboxer_preload.so"]


def test_the_real_checkout_is_fresh_once_the_session_started():
    import boxer

    if Path(boxer.__file__).resolve().parents[1] != Path(__file__).resolve().parents[1]:
        pytest.skip("boxer is not this checkout's editable install: no sources beside it to compare")
    assert stale_native_libraries() == []  # pytest_sessionstart rebuilt anything older

"""Hostile frames: every way a peer can break the decoder ends as a ProtocolError, never as
another exception, and numbers are checked where they enter (issue 13)."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME, MAX_FRAME, FrameDecoder, ProtocolError

GOOD_REPORT = {"active": 1, "accepted": 2, "connected": 3, "cpu": 1.5, "rss": 1000, "listening": [80],
               "idle": 0.0, "direct": 1, "relayed": 0}


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes, max_frame: int = MAX_FRAME) -> m.Message:
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(frame(body))
    wire = decoder.next_frame()
    assert wire is not None
    return m.decode(wire)


@pytest.mark.parametrize("body, error", [
    (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    (b"{\"a\":" * 10_000 + b"1" + b"}" * 10_000, "nested too deeply"),
    (b'{"t":"ping","seq":' + b"9" * 5000 + b"}", "not valid JSON"),  # beyond int's digit limit
    (b'{"t":"ping","seq":NaN}', "NaN, which is not a JSON number"),
    (b'{"t":"ping","seq":-Infinity}', "-Infinity, which is not a JSON number"),
    (b'{"t":"report","cpu":1e999}', "too large for a float"),
    (b'{"t":"ping","seq":1}\xff', "not valid JSON"),
])
def test_hostile_json_is_a_protocol_error(body, error):
    with pytest.raises(ProtocolError, match=error):
        decode_body(body)


def report(**change) -> dict:
    return {"t": "report", **GOOD_REPORT, **change}


@pytest.mark.parametrize("wire, error", [
    (report(active=10**400), "field 'active' must be a finite number of magnitude below 2\\*\\*53"),
    (report(rss=2**53), "field 'rss' must be a finite number"),
    (report(cpu=-1), "cpu must be 0..1e\\+06"),
    (report(cpu=1e7), "cpu must be 0..1e\\+06"),
    (report(idle=-0.5), "idle must be 0..1e\\+09"),
    (report(exited=256), "exited must be 0..255"),
    (report(lifetime_left=1e300), "field 'lifetime_left' must be a finite number"),
    (report(first_try=-1), "first_try must be 0..2\\*\\*53"),
    (report(listening=list(range(1, m.MAX_LISTENING + 2))), "more than 1024"),
    (report(listening=[[1]]), "listening ports must be integers"),
    ({"t": "drain", "instance": "ab" * 8, "grace": 1e6}, "grace must be 0..3600"),
    ({"t": "drain", "instance": "ab" * 8, "grace": -1}, "grace must be 0..3600"),
    ({"t": "demand", "service": "web", "port": 0, "waiting": 1}, "port must be in 1..65535"),
    ({"t": "demand", "service": "web", "port": 80, "waiting": -1}, "waiting must be 0..2\\*\\*53"),
    ({"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
      "report": {**GOOD_REPORT, "cpu": 10**30}}, "instance_report: report: field 'cpu' must be a finite"),
    ({"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
      "report": {**GOOD_REPORT, "t": "report"}}, "must not hold a 't' field"),
    ({"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
      "report": {"active": 1}}, "report: missing field 'accepted'"),
    ({"t": "snapshot", "instances": [7], "services": {}}, "snapshot instances must be objects"),
    ({"t": "snapshot", "instances": [{"name": "web-1"}], "services": {}}, "field 'service' must be a str"),
    ({"t": "snapshot", "services": {}, "instances": [
        {"name": "web-1", "service": "web", "addr": "100.64.0.1", "instance": "ab" * 8, "nat": "eim",
         "draining": False, "quiet": False, "report": {**GOOD_REPORT, "listening": "80"}}]},
     "field 'listening' has the wrong type"),
])
def test_numbers_and_sizes_are_checked_at_the_boundary(wire, error):
    with pytest.raises(ProtocolError, match=error):
        m.decode(json.loads(json.dumps(wire)))


def test_a_good_report_still_passes_every_way_in():
    assert m.decode(report()).cpu == 1.5
    forwarded = {"t": "instance_report", "name": "web-1", "service": "web", "instance": "ab" * 8,
                 "report": dict(GOOD_REPORT)}
    assert m.decode(forwarded).report == GOOD_REPORT
    trusted = m.InstanceReport.of_checked("web-1", "web", "ab" * 8, dict(GOOD_REPORT))
    assert trusted == m.decode(forwarded)


# -- fuzzing up to the frame limits --------------------------------------------------------------

JSON_PIECES = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"1", b"-", b"e", b"9" * 30,
                               b"1e999", b"NaN", b"\\u", b"\xff", b'{"t":"report",', b'"listening":[',
                               b"null", b"true", b" ", b"\x00"])


def _filled(chunk: bytes, size: int) -> bytes:
    return (chunk * (size // max(1, len(chunk)) + 1))[:size]


def _only_protocol_errors(data: bytes, max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(data)
    try:
        while (wire := decoder.next_frame()) is not None:
            m.decode(wire)
    except ProtocolError:
        pass


@settings(max_examples=60, deadline=None)
@given(prefix=st.lists(JSON_PIECES, max_size=40).map(b"".join),
       fill=st.lists(JSON_PIECES, min_size=1, max_size=6).map(b"".join),
       size=st.one_of(st.integers(0, MAX_FRAME), st.sampled_from([MAX_FRAME - 1, MAX_FRAME])))
def test_fuzz_upstream_frames_up_to_the_64k_limit(prefix, fill, size):
    body = (prefix + _filled(fill, size))[:size]
    _only_protocol_errors(frame(body), MAX_FRAME)


@settings(max_examples=12, deadline=None)
@given(fill=st.lists(JSON_PIECES, min_size=1, max_size=4).map(b"".join),
       size=st.sampled_from([MAX_DOWNSTREAM_FRAME, MAX_DOWNSTREAM_FRAME - 1, MAX_DOWNSTREAM_FRAME // 3]))
def test_fuzz_downstream_frames_up_to_the_16m_limit(fill, size):
    _only_protocol_errors(frame(_filled(fill, size)), MAX_DOWNSTREAM_FRAME)


def test_a_full_size_downstream_frame_of_deep_nesting_is_refused_cleanly():
    body = b"[" * (MAX_DOWNSTREAM_FRAME // 2) + b"]" * (MAX_DOWNSTREAM_FRAME // 2)
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_body(body, MAX_DOWNSTREAM_FRAME)


def test_a_frame_one_byte_over_each_limit_is_refused_before_it_is_buffered():
    for limit in (MAX_FRAME, MAX_DOWNSTREAM_FRAME):
        decoder = FrameDecoder(limit)
        decoder.receive_data(struct.pack(">I", limit + 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            decoder.next_frame()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                              st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                    max_leaves=30),
       st.sampled_from(sorted(m.MESSAGE_TYPES)))
def test_fuzz_each_message_type_with_any_json_values(value, kind):
    fields = [name for name, _, _ in m._schema(m.MESSAGE_TYPES[kind])] or ["x"]
    wire = {"t": kind, **{name: value for name in fields}}
    try:
        decoded = m.decode(json.loads(json.dumps(wire)))
    except ProtocolError:
        return
    for name in fields:  # what passed is within the bounds the decoder promises
        got = getattr(decoded, name)
        if isinstance(got, float):
            assert math.isfinite(got) and abs(got) < m.MAX_NUMBER

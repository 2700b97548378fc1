"""Framing and message parsing: round trips, byte-at-a-time input, and hostile input."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxer.nat_traversal import messages as m
from boxer.nat_traversal.wire import MAX_FRAME, FrameDecoder, ProtocolError, encode_frame

SAMPLES = [
    m.Challenge(v=m.PROTOCOL_VERSION, nonce="ab" * 16),
    m.Register(name="kv-1", service="kv", instance="12345678"),
    m.Register(name="kv-1", service="kv", instance="12345678", addr="100.64.0.9"),
    m.Members(hosts={"kv-1": "100.64.0.1"}, version=7, services={"kv": "100.64.255.254"}),
    m.MembersDelta(base=7, version=8, hosts={"kv-2": "100.64.0.2"}, gone=["kv-1"], services={"web": "100.64.255.253"}),
    m.Resync(),
    m.Connect(conn="c0ffee01", dst_addr="100.64.0.1", dst_port=6379, src_port=40000, ticket="aaaa0001"),
    m.Punch(conn="c0ffee01", role="server", peer="198.18.1.1:40000", ticket="bbbb0001", wrapped_key="ab" * 32,
            salt="5a170001"),
    m.ConnectFailed(conn="c0ffee01", error="ECONNREFUSED"),
    m.Registered(name="kv-1", addr="100.64.0.1", prefix="100.64.0.0/10", relay_port=7001, beat=0.2),
    m.Beat(),
    m.InstanceQuiet(name="kv-1", service="kv", instance="12345678", quiet=True, silent=0.81),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda msg: msg.TYPE)
def test_round_trip_byte_at_a_time(message):
    data = encode_frame(message.to_wire())
    decoder = FrameDecoder()
    for i in range(len(data) - 1):
        decoder.receive_data(data[i:i + 1])
        assert decoder.next_frame() is None
    decoder.receive_data(data[-1:])
    frame = decoder.next_frame()
    assert m.decode(frame) == message
    assert encode_frame(m.decode(frame).to_wire()) == data


def test_two_frames_in_one_read():
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(SAMPLES[0].to_wire()) + encode_frame(SAMPLES[1].to_wire()))
    assert m.decode(decoder.next_frame()) == SAMPLES[0]
    assert m.decode(decoder.next_frame()) == SAMPLES[1]
    assert decoder.next_frame() is None


def test_oversized_frame_is_rejected_before_buffering_it():
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.next_frame()


@pytest.mark.parametrize("wire, error", [
    ({"t": "nope"}, "unknown message type 'nope'"),
    ({"t": "ping"}, "ping: missing field 'seq'"),
    ({"t": "ping", "seq": "1"}, "ping: field 'seq' has the wrong type"),
    ({"t": "ping", "seq": True}, "ping: field 'seq' has the wrong type"),
    ({"t": "ping", "seq": 1, "x": 2}, "ping: unknown field(s) x"),
    ({"t": "register", "name": "Bad Name!", "service": "kv", "instance": "12345678"}, "not a valid host name"),
    ({"t": "connect", "conn": "c0ffee01", "dst_addr": "1.2.3", "dst_port": 1, "src_port": 1, "ticket": "aaaa0001"},
     "dst_addr must be an IPv4 address"),
    ({"t": "punch", "conn": "c0ffee01", "role": "boss", "peer": "1.2.3.4:5", "ticket": "aaaa0001", "wrapped_key": "ab" * 32,
      "salt": "5a170001"}, "role must be"),
    ({"t": "beat", "seq": 1}, "beat: unknown field(s) seq"),
    ({"t": "registered", "name": "kv", "addr": "100.64.0.1", "prefix": "100.64.0.0/10", "beat": 0},
     "beat must be 0.01..60 seconds"),
    ({"t": "registered", "name": "kv", "addr": "100.64.0.1", "prefix": "100.64.0.0/10", "beat": "0.2"},
     "registered: field 'beat' has the wrong type"),
    ({"t": "instance_quiet", "name": "kv", "service": "kv", "instance": "12345678", "quiet": 1, "silent": 1.0},
     "instance_quiet: field 'quiet' has the wrong type"),
    ({"t": "instance_quiet", "name": "kv", "service": "kv", "instance": "12345678", "quiet": True, "silent": -1},
     "silent must be >= 0"),
    ({"t": "instance_quiet", "name": "kv", "service": "kv", "instance": "12345678", "quiet": True,
      "silent": float("nan")}, "field 'silent' must be a finite number"),
    ({"t": "members", "hosts": {"kv": "100.64.0.1"}}, "members: missing field 'version'"),
    ({"t": "members", "hosts": {"kv": "100.64.0.01"}, "version": 1}, "address must be an IPv4 address, got '100.64.0.01'"),
    ({"t": "members", "hosts": {}, "version": -1}, "version must be 0..2**53"),
    ({"t": "members_delta", "base": 3, "version": 3, "hosts": {}, "gone": []}, "version must be after base"),
    ({"t": "members_delta", "base": 1, "version": 2, "hosts": {"kv": "100.64.0.1"}, "gone": ["kv"]},
     "'kv' cannot both join and leave"),
    ({"t": "members_delta", "base": 1, "version": 2, "hosts": {}, "gone": [7]}, "gone must list names"),
    ({"t": "members_delta", "base": 1, "version": 2, "hosts": {}, "gone": ["Bad!"]}, "not a valid host name"),
    ({"t": "members_delta", "base": 1, "version": 2, "hosts": {"kv": "1.2.3"}, "gone": []},
     "address must be an IPv4 address, got '1.2.3'"),
    ({"t": "members_delta", "base": 1, "version": 2, "hosts": {}, "gone": [], "services": {"web": "x"}},
     "address must be an IPv4 address, got 'x'"),
    ({"t": "resync", "v": 1}, "resync: unknown field(s) v"),
])
def test_malformed_messages_name_the_problem(wire, error):
    with pytest.raises(ProtocolError) as info:
        m.decode(wire)
    assert error in str(info.value)


# Every string ipaddress.IPv4Address rejects, check_ipv4 rejects (it no longer uses ipaddress, which
# cost ~6 us per address on every agent for every entry of every Members).
IPV4_REJECTED = [
    "", "1", "1.2", "1.2.3", "1.2.3.4.5", "1..3.4", ".1.2.3", "1.2.3.", "256.1.1.1", "1.2.3.256",
    "01.2.3.4", "1.2.3.04", "00.0.0.0", "1.2.3.0400", "0x1.2.3.4", "0x01020304", "4294967295", "1.2.65535",
    " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1.2.3.4 abc", "1.2.3.4\x00", "1.2.3.4/32", "+1.2.3.4", "1.2.3.-1",
    "\u0661.2.3.4", "1.2.3.\uff14", "\ud800", "localhost", "::1", "1.2.3.4:80",
]
IPV4_ACCEPTED = ["0.0.0.0", "1.2.3.4", "100.64.0.1", "255.255.255.255", "10.0.0.10", "199.99.9.0"]


@pytest.mark.parametrize("value", IPV4_REJECTED)
def test_check_ipv4_rejects_what_ipaddress_rejects(value):
    import ipaddress

    with pytest.raises(ValueError):
        ipaddress.IPv4Address(value)
    with pytest.raises(ValueError) as info:
        m.check_ipv4(value, "dst_addr")
    assert str(info.value) == f"dst_addr must be an IPv4 address, got {value!r}"


@pytest.mark.parametrize("value", IPV4_ACCEPTED)
def test_check_ipv4_accepts_canonical_dotted_quads(value):
    assert m.check_ipv4(value) == value


def test_check_ipv4_names_a_non_string():
    with pytest.raises(ValueError, match="address must be an IPv4 address string, got 7"):
        m.check_ipv4(7)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet="0123456789.x -", max_size=16),
    st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join),
    st.text(max_size=16)))
def test_check_ipv4_is_exactly_as_strict_as_ipaddress(value):
    import ipaddress

    try:
        ipaddress.IPv4Address(value)
        expected = True
    except ValueError:
        expected = False
    try:
        m.check_ipv4(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == expected


def test_endpoints_are_as_strict_as_addresses():
    assert m.check_endpoint("198.18.1.1:40000") == "198.18.1.1:40000"
    for bad in ("198.18.1.01:40000", "198.18.1:40000", "198.18.1.1:0", "198.18.1.1", "198.18.1.1:x"):
        with pytest.raises(ValueError, match="peer must be 'ipv4:port'"):
            m.check_endpoint(bad, "peer")


def test_non_object_and_non_json_frames():
    for body in (b"[1,2]", b"\xff\xfe", b"{"):
        decoder = FrameDecoder()
        decoder.receive_data(struct.pack(">I", len(body)) + body)
        with pytest.raises(ProtocolError):
            decoder.next_frame()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoder_only_ever_raises_protocol_error(data):
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">I", len(data)) + data)
    try:
        frame = decoder.next_frame()
        if frame is not None:
            m.decode(frame)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "conn", "seq", "name", "v", "nonce", "hosts", "peer", "role",
                                        "beat", "quiet", "silent", "service", "instance", "version", "base",
                                        "gone", "services"]),
                       st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans(), st.floats(),
                                 st.sampled_from(list(m.MESSAGE_TYPES)))))
def test_fuzz_message_fields_only_ever_raise_protocol_error(wire):
    try:
        m.decode(json.loads(json.dumps(wire)))
    except ProtocolError:
        pass


def test_the_coordinators_beat_fast_path_is_exactly_a_decoded_beat():
    from boxer.agent.link import BEAT_FRAME as AGENT_BEAT
    from boxer.nat_traversal.coordinator import BEAT_FRAME

    assert BEAT_FRAME is AGENT_BEAT is m.BEAT_FRAME  # one definition
    decoder = FrameDecoder()
    decoder.receive_data(BEAT_FRAME)
    assert m.decode(decoder.next_frame()) == m.Beat()


def test_the_interposer_default_prefix_is_the_protocol_default():
    """The C interposer cannot import Python: its copy of the default is held to this one."""
    import re
    from pathlib import Path

    from boxer.nat_traversal.defaults import DEFAULT_PREFIX

    config_c = (Path(__file__).resolve().parents[1] / "interposer" / "config.c").read_text()
    assert re.search(r'#define DEFAULT_PREFIX "([^"]+)"', config_c).group(1) == DEFAULT_PREFIX


def test_a_members_of_checked_entries_equals_one_checked_again():
    hosts, services = {"kv-1": "100.64.0.1"}, {"kv": "100.64.255.254"}
    trusted = m.Members.of_checked(hosts, 3, services)
    assert trusted == m.Members(hosts=hosts, version=3, services=services)
    assert m.decode(trusted.to_wire()) == trusted
    with pytest.raises(dataclasses.FrozenInstanceError):
        trusted.version = 4  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(m.MESSAGE_TYPES))
def test_every_message_type_has_a_decoder_for_each_field(name: str) -> None:
    """Each field's annotation must map to a type check, whether written Optional[X] or X | None
    (a lint fix that rewrote one into the other once left Register undecodable)."""
    assert len(m._schema(m.MESSAGE_TYPES[name])) == len(dataclasses.fields(m.MESSAGE_TYPES[name]))


def test_the_interposer_default_wake_address_is_the_agents():
    """Wake connections come from WAKE_ADDR; the interposer's default must be the same address."""
    import re
    from pathlib import Path

    from boxer.agent.ipc import WAKE_ADDR

    config_c = (Path(__file__).resolve().parents[1] / "interposer" / "config.c").read_text()
    assert re.search(r'#define DEFAULT_WAKE "([^"]+)"', config_c).group(1) == WAKE_ADDR

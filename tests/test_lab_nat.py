"""The hostile lab: NAT types, public hosts, link conditions and mapping timeouts.

Pure parts (parsing, rules, the shaper's netlink messages) first; then real labs, which need
root and skip with the reason otherwise (see conftest.py). Measurements are printed (-s)."""

from __future__ import annotations

import json
import shlex
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from boxer.cli.lab import lab as lab_cli
from boxer.lab import (
    COORDINATOR_CMD_ENV,
    Lab,
    LabUsageError,
    LinkConditions,
    _firewall,
    _netns,
    _shaper,
    _shaping,
    lab_down,
    lab_plan,
    load_lab,
    parse_nat,
)
from boxer.lab._conditions import mapping_timeout_sysctls, validate_mapping_timeout

HOSTS3 = ["h1", "h2", "h3"]

# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ["eim", "eim", "eim"]),
        ("eim", ["eim", "eim", "eim"]),
        ("symmetric", ["symmetric"] * 3),
        ("h2=symmetric", ["eim", "symmetric", "eim"]),
        ("symmetric, h2=eim", ["symmetric", "eim", "symmetric"]),
        ({"h3": "symmetric"}, ["eim", "eim", "symmetric"]),
    ],
)
def test_nat_specs(spec: object, expected: list[str]) -> None:
    assert list(parse_nat(spec, HOSTS3).values()) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("full-cone", "unknown NAT type 'full-cone': use one of eim, symmetric"),
        ("h2=cone", "unknown NAT type 'cone' for h2: use one of eim, symmetric"),
        ("h9=symmetric", "NAT type for 'h9': not a NATed host of this lab (it has h1..h3)"),
        ("p1=symmetric", "NAT type for 'p1': not a NATed host of this lab"),
        ("eim,symmetric", "more than one default type"),
        ("h1=eim,h1=symmetric", "h1 is named twice"),
        ("eim,,h1=eim", "use TYPE, HOST=TYPE or a comma-separated list"),
        ("", "use TYPE, HOST=TYPE"),
    ],
)
def test_bad_nat_specs_say_why(spec: str, message: str) -> None:
    with pytest.raises(LabUsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_nat(spec, HOSTS3)


def test_link_conditions_validate_and_summarise() -> None:
    assert LinkConditions().clean and LinkConditions().summary() == "-"
    link = LinkConditions(rtt=20, jitter=2, loss=1.5)
    assert link.summary() == "rtt 20ms ±2ms loss 1.5%"
    assert LinkConditions.from_description(link.describe()) == link
    assert LinkConditions.from_description(None) == LinkConditions()
    with pytest.raises(LabUsageError, match="invalid loss 101: use 0 to 100 percent"):
        LinkConditions(loss=101)
    with pytest.raises(LabUsageError, match="invalid RTT -1: use 0 to 10000 ms"):
        LinkConditions(rtt=-1)
    with pytest.raises(LabUsageError, match="invalid jitter 'x': a number of ms"):
        LinkConditions(jitter="x")  # type: ignore[arg-type]
    with pytest.raises(LabUsageError, match="invalid RTT nan"):
        LinkConditions(rtt=float("nan"))


def test_mapping_timeout_validation_and_sysctls() -> None:
    assert validate_mapping_timeout(None) is None
    assert validate_mapping_timeout(30) == 30
    for bad in (0, 1.5, -3, True, "30", 10**9):
        with pytest.raises(LabUsageError, match="invalid mapping timeout"):
            validate_mapping_timeout(bad)
    assert mapping_timeout_sysctls(9) == {
        "net/netfilter/nf_conntrack_tcp_timeout_established": "9",
        "net/netfilter/nf_conntrack_udp_timeout": "9",
        "net/netfilter/nf_conntrack_udp_timeout_stream": "9",
        "net/netfilter/nf_conntrack_tcp_loose": "0",
    }


def test_symmetric_rules_randomise_ports_and_eim_rules_do_not() -> None:
    assert "-A POSTROUTING -o bx-up -j MASQUERADE --random-fully" in _firewall.router_rules(
        nat="symmetric")
    assert "--random" not in _firewall.router_rules(nat="eim")
    with pytest.raises(LabUsageError, match="unknown NAT type 'cone'"):
        _firewall.router_rules(nat="cone")


def test_queue_rules_replace_only_the_mangle_table() -> None:
    shaped = _shaping.queue_rules(True)
    assert shaped == "*mangle\n-A POSTROUTING -o bx-up -j NFQUEUE --queue-num 0\nCOMMIT\n"
    assert "bypass" not in shaped  # a dead shaper must not leave a silently clean link
    assert _shaping.queue_rules(False) == "*mangle\nCOMMIT\n"
    assert _shaping.bridge_queue_rules({"bx-c": 0, "bx-p3": 3}) == (
        "*mangle\n"
        "-A FORWARD -m physdev --physdev-in bx-c -j NFQUEUE --queue-num 0\n"
        "-A FORWARD -m physdev --physdev-in bx-p3 -j NFQUEUE --queue-num 3\n"
        "COMMIT\n")
    assert _shaping.bridge_queue_rules({}) == "*mangle\nCOMMIT\n"


def test_public_hosts_in_the_plan() -> None:
    plan = lab_plan("demo", 2, nat="h2=symmetric", public=2)
    assert [h.nat for h in plan.hosts] == ["eim", "symmetric"]
    p2 = plan.public_hosts[1]
    assert (p2.name, p2.netns, p2.address, p2.public_address, p2.bridge_port) == (
        "p2", "bx-demo-p2", "198.18.2.2", "198.18.2.2", "bx-p2")
    assert plan.all_netns()[-2:] == ["bx-demo-p1", "bx-demo-p2"]
    assert plan.endpoint_names() == ["coord", "h1", "h2", "p1", "p2"]
    assert plan.netns_of("p1") == "bx-demo-p1" and plan.netns_of("h2") == "bx-demo-h2"
    # Every endpoint's packets wait one hop after it, never in the sender's own stack: h2's
    # on its router, coord's and p<k>'s where they enter the bridge, one queue each.
    assert _shaping.queue_of(plan, "h2") == ("bx-demo-r2", 0)
    assert _shaping.queue_of(plan, "coord") == ("bx-demo-inet", 0)
    assert _shaping.queue_of(plan, "p2") == ("bx-demo-inet", 2)
    assert _shaping.queue_netns(plan, "p1") == "bx-demo-inet"
    assert [_shaping.bridge_port(plan, e) for e in ("coord", "p1", "p2")] == [
        "bx-c", "bx-p1", "bx-p2"]
    with pytest.raises(LabUsageError, match="no host 'p3' in this lab: use 'coord', h1..h2 or p1..p2"):
        plan.netns_of("p3")
    with pytest.raises(LabUsageError, match="invalid public host count 201"):
        lab_plan("demo", 1, public=201)


def test_shaper_parses_packets_and_builds_verdicts() -> None:
    # An NFQNL_MSG_PACKET as the kernel sends it: nlmsghdr, nfgenmsg, NFQA_PACKET_HDR first.
    def packet(packet_id: int, queue: int = 0) -> bytes:
        attr = _shaper._attr(_shaper.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 4))
        attr += _shaper._attr(11, b"\x00\x00\x00\x05")  # some other attribute after it
        body = struct.pack("!BBH", 2, 0, queue) + attr
        return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body

    assert _shaper.packet_ids(packet(7) + packet(0xFFFFFFFF, queue=258)) == [
        (0, 7), (258, 0xFFFFFFFF)]
    assert _shaper.packet_ids(b"") == []
    assert _shaper.packet_ids(b"\x00" * 16) == []  # a zero-length header ends the walk
    verdict = _shaper.verdict_message(258, 7, _shaper.NF_ACCEPT)
    length, kind, flags = struct.unpack_from("=IHH", verdict)
    assert (length, kind, flags) == (len(verdict), (3 << 8) | 1, 1)
    assert struct.unpack_from("!H", verdict, 18) == (258,)  # nfgenmsg res_id: the queue
    assert verdict[-8:] == struct.pack("!II", 1, 7)  # NFQA_VERDICT_HDR: verdict, id


def test_shaper_reads_only_shaped_links(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text(json.dumps({
        "name": "x", "host_count": 2, "public_count": 2,
        "coordinator_netns": "bx-x-coord",
        "coordinator_link": {"rtt_ms": 0, "jitter_ms": 0, "loss_pct": 0},
        "hosts": [
            {"name": "h1", "netns": "bx-x-h1", "router_netns": "bx-x-r1",
             "link": {"rtt_ms": 40, "jitter_ms": 4, "loss_pct": 2}},
            {"name": "p1", "netns": "bx-x-p1", "router_netns": None,
             "link": {"rtt_ms": 10, "jitter_ms": 0, "loss_pct": 0}},
            {"name": "h2", "netns": "bx-x-h2", "router_netns": "bx-x-r2"},
            {"name": "p2", "netns": "bx-x-p2", "router_netns": None,
             "link": {"rtt_ms": 0, "jitter_ms": 0, "loss_pct": 50}},
        ],
    }))
    shapes = _shaper.read_shapes(tmp_path / "lab.json")
    assert shapes == {
        ("bx-x-r1", 0): _shaper.Shape(delay=0.02, jitter=0.002, loss=0.02),
        ("bx-x-inet", 1): _shaper.Shape(delay=0.005, jitter=0.0, loss=0.0),
        ("bx-x-inet", 2): _shaper.Shape(delay=0.0, jitter=0.0, loss=0.5),
    }


# --------------------------------------------------------------------------- helpers

# Listens on the given ports of `address`; reports every peer as [listen_port, ip, port].
PORT_REPORTER = textwrap.dedent(
    """
    import json, select, socket, sys, time
    address, count, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    listeners = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen()
        listeners.append(s)
    print("listening", flush=True)
    seen, held, deadline = [], [], time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        for s in select.select(listeners, [], [], 0.1)[0]:
            conn, peer = s.accept()
            seen.append([s.getsockname()[1], peer[0], peer[1]])
            held.append(conn)
    print(json.dumps(seen), flush=True)
    """
)

# Connects from one local port to every ADDRESS:PORT given, keeping all connections open.
SAME_PORT_CONNECTOR = textwrap.dedent(
    """
    import socket, sys, time
    local, targets = int(sys.argv[1]), sys.argv[2:]
    held = []
    for target in targets:
        host, port = target.rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", local))
        s.settimeout(3)
        s.connect((host, int(port)))
        held.append(s)
    print("connected", flush=True)
    sys.stdin.read()
    """
)

# Times `n` TCP connects (SYN to SYN-ACK: one round trip) to ADDRESS:PORT; prints seconds.
CONNECT_TIMER = textwrap.dedent(
    """
    import json, socket, sys, time
    address, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    times = []
    for _ in range(n):
        started = time.monotonic()
        s = socket.create_connection((address, port), timeout=5)
        times.append(time.monotonic() - started)
        s.close()
    print(json.dumps(times))
    """
)


def public_ports_seen(lab: Lab, host: str, local_port: int, targets: list[tuple[str, int]]) -> list[int]:
    """Connect from `host`'s `local_port` to each target (all listening in coord); return the
    source port the coordinator host saw for each, in order."""
    reporter = lab.popen("coord", [sys.executable, "-c", PORT_REPORTER, "198.18.0.1",
                                   str(len(targets)), *(str(p) for _, p in targets)],
                         stdout=subprocess.PIPE, text=True)
    assert reporter.stdout is not None and reporter.stdout.readline() == "listening\n"
    connector = lab.popen(host, [sys.executable, "-c", SAME_PORT_CONNECTOR, str(local_port),
                                 *(f"{a}:{p}" for a, p in targets)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = reporter.communicate(timeout=15)
        seen = json.loads(out)
        assert connector.stdout is not None and connector.stdout.readline() == "connected\n"
    finally:
        connector.kill()
        connector.communicate()
        reporter.kill()
        reporter.communicate()
    by_port = {listen_port: (ip, port) for listen_port, ip, port in seen}
    assert {ip for ip, _ in by_port.values()} == {lab.host(host).public_address}
    return [by_port[p][1] for _, p in targets]


def connect_times(lab: Lab, host: str, address: str, port: int, n: int = 5) -> list[float]:
    out = lab.run(host, [sys.executable, "-c", CONNECT_TIMER, address, str(port), str(n)],
                  capture_output=True, text=True, timeout=30, check=True).stdout
    return [t * 1000 for t in json.loads(out)]


def connect_result(lab: Lab, host: str, address: str, port: int, timeout: float = 1.0) -> str:
    code = ("import socket, sys\ntry:\n"
            "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))\n"
            "    print('ok', s.recv(100).decode().strip())\n"
            "except OSError as e:\n    print('error', type(e).__name__)\n")
    return lab.run(host, [sys.executable, "-c", code, address, str(port), str(timeout)],
                   capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def serve(lab: Lab, host: str, port: int, count: int) -> subprocess.Popen[str]:
    """A server in `host` answering each of `count` connections with the peer it saw."""
    code = textwrap.dedent(
        """
        import socket, sys
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        s.listen()
        s.settimeout(10)
        print("listening", flush=True)
        for _ in range(int(sys.argv[2])):
            try:
                conn, peer = s.accept()
            except socket.timeout:
                break
            conn.sendall(f"{peer[0]}\\n".encode())
            conn.close()
        """
    )
    proc = lab.popen(host, [sys.executable, "-c", code, str(port), str(count)],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


# --------------------------------------------------------------------------- NAT types


@pytest.mark.lab
def test_symmetric_nat_changes_the_port_per_destination_and_eim_keeps_it(
    lab_factory, standin_coordinator  # type: ignore[no-untyped-def]
) -> None:
    lab = lab_factory(hosts=2, coordinator_cmd=standin_coordinator, nat="h1=symmetric")
    targets = [("198.18.0.1", 8001), ("198.18.0.1", 8002), ("198.18.0.1", 8003)]
    symmetric = public_ports_seen(lab, "h1", 41001, targets)
    eim = public_ports_seen(lab, "h2", 41002, targets)
    print(f"same local port to 3 destinations: symmetric h1 -> {symmetric}, eim h2 -> {eim}")
    assert eim == [41002, 41002, 41002]  # endpoint-independent, port preserved
    # A fresh random port per destination (two equal by chance: p ~ 3/64000).
    assert len(set(symmetric)) == 3 and symmetric != [41001] * 3
    shown = json.loads(CliRunner().invoke(lab_cli, ["show", "--name", lab.name, "-o", "json"]).output)
    assert [(h["name"], h["nat"]) for h in shown["hosts"]] == [("h1", "symmetric"), ("h2", "eim")]
    assert load_lab(lab.name).host("h1").nat == "symmetric"


@pytest.mark.lab
def test_hole_punching_fails_through_a_symmetric_nat(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    """The same simultaneous open that test_lab.py shows working between two eim hosts."""
    lab = lab_factory(hosts=2, coordinator_cmd=standin_coordinator, nat="h1=symmetric")
    punch = textwrap.dedent(
        """
        import socket, sys, time
        port, peer = int(sys.argv[1]), sys.argv[2]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.settimeout(0.3)
            try:
                s.connect((peer, port))
                print("connected")
                sys.exit()
            except OSError:
                s.close()
                time.sleep(0.05)
        print("failed")
        """
    )
    procs = [lab.popen(h, [sys.executable, "-c", punch, "40200", lab.host(peer).public_address],
                       stdout=subprocess.PIPE, text=True)
             for h, peer in (("h1", "h2"), ("h2", "h1"))]
    assert [p.communicate(timeout=20)[0].strip() for p in procs] == ["failed", "failed"]


# --------------------------------------------------------------------------- public hosts


@pytest.mark.lab
def test_public_hosts_accept_inbound_and_nated_hosts_do_not(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator, public=2)
    p1 = lab.public_host("p1")
    server = serve(lab, "p1", 9000, count=3)
    try:
        assert connect_result(lab, "h1", p1.address, 9000) == "ok 198.18.1.1"  # via h1's NAT
        assert connect_result(lab, "coord", p1.address, 9000) == "ok 198.18.0.1"
        assert connect_result(lab, "p2", p1.address, 9000) == "ok 198.18.2.2"  # public to public
    finally:
        stop(server)
    nated = serve(lab, "h1", 9001, count=1)
    try:
        assert connect_result(lab, "p1", lab.host("h1").public_address, 9001) == "error TimeoutError"
    finally:
        stop(nated)
    with pytest.raises(LabUsageError, match="'p1' is a public host: use Lab.public_host"):
        lab.host("p1")
    result = subprocess.run(
        [sys.executable, "-m", "boxer", "lab", "exec", "--name", lab.name, "p2", "--",
         "sh", "-c", "echo $BOXER_LAB_HOST; ip -o -4 addr show bx-up"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "p2" and "198.18.2.2/16" in result.stdout
    shown = load_lab(lab.name).describe()["hosts"]
    assert [(h["name"], h["nat"], h["router_netns"]) for h in shown] == [
        ("h1", "eim", f"bx-{lab.name}-r1"), ("p1", None, None), ("p2", None, None)]


# --------------------------------------------------------------------------- link conditions


@pytest.mark.lab
def test_rtt_is_what_was_asked_between_any_two_endpoints(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator, public=1, rtt=40)
    server = serve(lab, "p1", 9000, count=100)
    try:
        measured = {
            "h1->coord": statistics.median(connect_times(lab, "h1", "198.18.0.1", 7000)),
            "h1->p1": statistics.median(connect_times(lab, "h1", "198.18.2.1", 9000)),
            "coord->p1": statistics.median(connect_times(lab, "coord", "198.18.2.1", 9000)),
        }
        print("connect time (1 RTT) with --rtt 40:", {k: f"{v:.1f} ms" for k, v in measured.items()})
        for pair, rtt in measured.items():
            assert 39 <= rtt <= 55, pair
        # At run time: h1 at 100 ms, the coordinator at 40: their round trip is the mean.
        lab.set_link("h1", rtt=100)
        changed = statistics.median(connect_times(lab, "h1", "198.18.0.1", 7000))
        for endpoint in ("coord", "p1", "h1"):
            lab.set_link(endpoint)
        clean = statistics.median(connect_times(lab, "h1", "198.18.0.1", 7000))
    finally:
        stop(server)
    print(f"h1 at 100 ms, coord at 40 ms: {changed:.1f} ms; all clean again: {clean:.2f} ms")
    assert 69 <= changed <= 85
    assert clean < 5
    assert load_lab(lab.name).link("h1") == LinkConditions()
    assert lab.link("h1") == LinkConditions()


# Accepts connections on 198.18.2.1:PORT; for each, counts bytes to EOF and answers the count.
BYTE_SINK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("198.18.2.1", int(sys.argv[1])))
    s.listen()
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        total = 0
        while data := conn.recv(1 << 16):
            total += len(data)
        conn.sendall(str(total).encode())
        conn.close()
    """
)

# Sends for SECONDS to ADDRESS:PORT (with BBR when the kernel has it, as this machine's
# default), then waits for the sink's count; prints Mbit/s delivered.
BULK_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.create_connection((address, port), timeout=30)
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        if "bbr" in f.read().split():
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"bbr")
    chunk = b"x" * (1 << 16)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    total = int(s.recv(100))
    print(total * 8 / (time.monotonic() - started) / 1e6)
    """
)


@pytest.mark.lab
def test_coord_and_public_senders_are_as_fast_as_nated_ones(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    # Shaping in the sender's own namespace held coord and p<k> senders to ~4.5 Mbit/s at
    # 20 ms (TCP Small Queues counts a packet waiting out its delay against its socket),
    # loss or not, while NATed hosts, shaped on their router, ran at ~250. Compared within
    # one run, so a loaded machine slows all three alike.
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator, public=2, rtt=20, loss=2)
    sink = lab.popen("p1", [sys.executable, "-c", BYTE_SINK, "9600"], stdout=subprocess.PIPE,
                     text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline() == "listening\n"
        rates = {
            sender: float(lab.run(sender, [sys.executable, "-c", BULK_SENDER, "198.18.2.1",
                                           "9600", "2"],
                                  capture_output=True, text=True, timeout=60,
                                  check=True).stdout)
            for sender in ("h1", "p2", "coord")
        }
    finally:
        stop(sink)
    print("TCP to p1 at 20 ms, 2 % loss:", {k: f"{v:.0f} Mbit/s" for k, v in rates.items()})
    assert rates["p2"] >= 0.3 * rates["h1"], rates
    assert rates["coord"] >= 0.3 * rates["h1"], rates


@pytest.mark.lab
def test_loss_drops_that_share_of_packets(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator)
    lab.set_link("h1", loss=30)  # only h1's egress: h1 -> coord loses 30 %
    receiver_code = textwrap.dedent(
        """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.bind(("198.18.0.1", 9500))
        s.settimeout(1.0)
        print("listening", flush=True)
        n = 0
        try:
            while s.recv(2048) != b"end":
                n += 1
        except socket.timeout:
            pass
        print(n, flush=True)
        """
    )
    sender_code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   "for i in range(2000):\n    s.sendto(b'x' * 100, ('198.18.0.1', 9500))\n"
                   "    time.sleep(0.0002)\n")
    receiver = lab.popen("coord", [sys.executable, "-c", receiver_code], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline() == "listening\n"
        lab.run("h1", [sys.executable, "-c", sender_code], check=True, timeout=30)
        received = int(receiver.communicate(timeout=15)[0].strip())
    finally:
        stop(receiver)
    print(f"30 % loss: {received} of 2000 datagrams arrived ({1 - received / 2000:.1%} lost)")
    assert 1200 <= received <= 1600  # 1400 expected; +-200 is > 9 standard deviations


# --------------------------------------------------------------------------- mapping timeouts


CONNTRACK_TCP = ["conntrack", "-L", "-p", "tcp", "--dport", "9600"]


@pytest.mark.lab
def test_idle_mapping_expires_after_the_timeout(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator, mapping_timeout=2)
    router = lab.host("h1").router_netns
    for key, value in mapping_timeout_sysctls(2).items():
        assert _netns.read_sysctl(router, key) == value
    # Per namespace: the machine's own conntrack and the coordinator's are untouched.
    key = "net/netfilter/nf_conntrack_tcp_timeout_established"
    assert Path(f"/proc/sys/{key}").read_text().strip() != "2"
    assert _netns.read_sysctl(lab.coordinator_netns, key) != "2"
    assert load_lab(lab.name).describe()["mapping_timeout"] == 2

    # coord serves one connection, stays idle, then (on a line from the test) sends late data.
    server_code = textwrap.dedent(
        """
        import socket, sys
        s = socket.socket()
        s.bind(("198.18.0.1", 9600))
        s.listen()
        print("listening", flush=True)
        conn, _ = s.accept()
        conn.sendall(b"hello\\n")
        sys.stdin.readline()
        conn.sendall(b"late\\n")
        sys.stdin.readline()
        """
    )
    client_code = textwrap.dedent(
        """
        import socket, sys
        s = socket.create_connection(("198.18.0.1", 9600), timeout=5)
        print(s.recv(100).decode().strip(), flush=True)
        sys.stdin.readline()  # idle (and open: a FIN would move the entry to another timeout)
        s.settimeout(1.5)
        try:
            print(s.recv(100).decode().strip() or "eof", flush=True)
        except socket.timeout:
            print("nothing", flush=True)
        """
    )
    server = lab.popen("coord", [sys.executable, "-c", server_code], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        client = lab.popen("h1", [sys.executable, "-c", client_code], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline() == "hello\n"
        idle_since = time.monotonic()
        entries = subprocess.run(["ip", "netns", "exec", router, *CONNTRACK_TCP],
                                 capture_output=True, text=True, check=False)
        assert "ESTABLISHED" in entries.stdout, entries
        while time.monotonic() - idle_since < 6:
            entries = subprocess.run(["ip", "netns", "exec", router, *CONNTRACK_TCP],
                                     capture_output=True, text=True, check=False)
            if "9600" not in entries.stdout:
                break
            time.sleep(0.1)
        expired_after = time.monotonic() - idle_since
        print(f"mapping of an idle TCP flow gone after {expired_after:.1f} s (timeout 2 s)")
        assert 1.5 <= expired_after <= 4.0
        assert server.stdin is not None and client.stdin is not None
        client.stdin.write("check\n")
        client.stdin.flush()
        server.stdin.write("send\n")
        server.stdin.flush()
        # The coordinator's late data has no mapping to come back through any more.
        assert client.stdout.readline() == "nothing\n"
    finally:
        for proc in (server, client):
            if proc is not None:
                proc.kill()
                proc.communicate()


@pytest.mark.lab
def test_flush_mappings_freeze_and_thaw(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory(hosts=1, coordinator_cmd=standin_coordinator)
    sleeper = lab.popen("h1", ["sh", "-c", "echo inside; exec sleep 30"], stdout=subprocess.PIPE,
                        text=True)
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "inside\n"

        def state() -> str:
            return Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

        def settles(wanted: tuple[str, ...]) -> str:
            # a signal is delivered asynchronously: give the scheduler a moment
            deadline = time.monotonic() + 2.0
            while (now := state()) not in wanted and time.monotonic() < deadline:
                time.sleep(0.01)
            return now

        assert sleeper.pid in lab.freeze("h1")
        assert settles(("T",)) == "T"
        assert sleeper.pid in lab.thaw("h1")
        assert settles(("S", "R")) in ("S", "R")  # running again
        assert connect_result(lab, "h1", "198.18.0.1", 7000, timeout=1).startswith("ok")
        lab.flush_mappings("h1")
        listing = subprocess.run(["ip", "netns", "exec", lab.host("h1").router_netns,
                                  "conntrack", "-L"], capture_output=True, text=True, check=False)
        assert "198.18.0.1" not in listing.stdout
    finally:
        sleeper.kill()
        sleeper.communicate()


# --------------------------------------------------------------------------- the CLI


@pytest.mark.lab
def test_cli_up_with_every_option_and_show(require_lab: None, standin_coordinator: list[str]) -> None:
    from conftest import unique_lab_name

    name = unique_lab_name()
    runner = CliRunner(env={COORDINATOR_CMD_ENV: shlex.join(standin_coordinator)})
    try:
        result = runner.invoke(lab_cli, [
            "up", "--name", name, "--hosts", "2", "--nat", "eim,h2=symmetric", "--public", "1",
            "--rtt", "20", "--jitter", "2", "--loss", "1", "--mapping-timeout", "30",
        ])
        assert result.exit_code == 0, result.output
        assert "2 hosts, 1 public" in result.output
        table = runner.invoke(lab_cli, ["show", "--name", name]).output
        assert "mappings     expire after 30 s idle" in table
        assert "coord link   rtt 20ms ±2ms loss 1%" in table
        lines = {line.split()[0]: line for line in table.splitlines() if line[:1] in "hp"}
        assert lines["h2"].split()[5:] == ["symmetric", "rtt", "20ms", "±2ms", "loss", "1%"]
        assert lines["p1"].split()[1:6] == ["198.18.2.1", "198.18.2.1", f"bx-{name}-p1", "-",
                                            "none"]
        changed = runner.invoke(lab_cli, ["link", "--name", name, "h1", "--rtt", "60"])
        assert changed.exit_code == 0 and "h1 link rtt 60ms" in changed.output, changed.output
        shown = json.loads(runner.invoke(lab_cli, ["show", "--name", name, "-o", "json"]).output)
        assert shown["hosts"][0]["link"] == {"rtt_ms": 60.0, "jitter_ms": 0.0, "loss_pct": 0.0}
        assert shown["coordinator_link"]["rtt_ms"] == 20.0
        bad = runner.invoke(lab_cli, ["up", "--name", "x" + name[1:], "--nat", "h3=symmetric"])
        assert bad.exit_code == 1
        assert "NAT type for 'h3': not a NATed host of this lab (it has h1..h2)" in bad.output
        bad = runner.invoke(lab_cli, ["up", "--name", "x" + name[1:], "--loss", "120"])
        assert bad.exit_code == 2 and "120.0 is not in the range 0<=x<=100" in bad.output
    finally:
        lab_down(name)


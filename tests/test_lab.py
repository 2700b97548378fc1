"""The lab: the pure address plan and rules first, then real namespaces behind real NATs.

The namespace tests need root; they skip with the reason otherwise (see conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from boxer.cli.lab import lab as lab_cli
from boxer.lab import (
    CoordinatorStartError,
    Lab,
    LabExistsError,
    LabNotFoundError,
    LabUsageError,
    _firewall,
    _netns,
    _process,
    _state,
    host_plan,
    lab_down,
    lab_plan,
    lab_up,
    load_lab,
)
from boxer.lab._lab import HOST_TCP_TABLE
from boxer.lab._plan import parse_host_name

# --------------------------------------------------------------------------- pure parts


def test_host_plan_maps_index_to_names_and_addresses() -> None:
    host = host_plan("demo", 7)
    assert host.name == "h7"
    assert host.netns == "bx-demo-h7"
    assert host.router_netns == "bx-demo-r7"
    assert host.address == "10.0.7.2"
    assert host.gateway == "10.0.7.1"
    assert host.public_address == "198.18.1.7"
    assert host.bridge_port == "bx-r7"


def test_lab_plan_lists_every_namespace_once() -> None:
    plan = lab_plan("demo", 3)
    assert plan.coordinator == "198.18.0.1:7000"
    assert plan.all_netns() == [
        "bx-demo-inet", "bx-demo-coord",
        "bx-demo-r1", "bx-demo-h1", "bx-demo-r2", "bx-demo-h2", "bx-demo-r3", "bx-demo-h3",
    ]
    assert len({h.public_address for h in lab_plan("big", 200).hosts}) == 200
    assert lab_plan("demo", 2, public=1).instance_netns() == ["bx-demo-h1", "bx-demo-h2", "bx-demo-p1"]


@pytest.mark.parametrize("name", ["", "UPPER", "has-dash", "x" * 11, "a b", "../etc"])
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(LabUsageError, match="invalid lab name"):
        lab_plan(name, 1)


@pytest.mark.parametrize("hosts", [0, -1, 201])
def test_bad_host_counts_are_refused(hosts: int) -> None:
    with pytest.raises(LabUsageError, match=f"invalid host count {hosts}: a lab has 1 to 200"):
        lab_plan("ok", hosts)


def test_host_names_parse() -> None:
    assert parse_host_name("h2", 3) == 2
    assert parse_host_name("coord", 3) is None
    for bad in ("h4", "h0", "h01", "host1", "r1", ""):
        with pytest.raises(LabUsageError, match="use 'coord' or h1..h3"):
            parse_host_name(bad, 3)


def test_router_rules_masquerade_and_drop_never_reject() -> None:
    rules = _firewall.router_rules()
    assert "-A POSTROUTING -o bx-up -j MASQUERADE" in rules
    assert ":FORWARD DROP [0:0]" in rules and ":INPUT DROP [0:0]" in rules
    assert "-A FORWARD -i bx-lan -o bx-up -m conntrack --ctstate NEW -j ACCEPT" in rules
    assert "REJECT" not in rules
    assert "--random" not in rules  # random ports would make the NAT symmetric: no punching
    assert rules.count("COMMIT") == 2


def test_port_forward_rules() -> None:
    rules = _firewall.port_forward_rules("10.0.3.2", 8080)
    assert "-A PREROUTING -i bx-up -p tcp --dport 8080 -j DNAT --to-destination 10.0.3.2:8080" in rules
    with pytest.raises(ValueError, match="port 0 out of range"):
        _firewall.port_forward_rules("10.0.3.2", 0)


def test_lab_env_adds_boxer_variables_and_keeps_path() -> None:
    env = _process.lab_env(
        {"HOME": "/root"}, lab="x", host="h1", coordinator="198.18.0.1:7000", secret_file="/s"
    )
    assert env["PATH"] == os.environ.get("PATH", os.defpath)
    assert env["HOME"] == "/root"
    assert env["BOXER_COORDINATOR"] == "198.18.0.1:7000"
    assert (env["BOXER_LAB"], env["BOXER_LAB_HOST"], env["BOXER_SECRET_FILE"]) == ("x", "h1", "/s")


# --------------------------------------------------------------------------- helpers

# Accepts up to `count` connections within `seconds`; reports, as JSON on stdout, who connected.
LISTENER = textwrap.dedent(
    """
    import json, socket, sys, time
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen()
    print("listening", flush=True)
    peers = []
    deadline = time.monotonic() + seconds
    while len(peers) < count and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            conn, peer = s.accept()
        except socket.timeout:
            break
        peers.append(peer[0])
        conn.sendall(b"served\\n")
        conn.close()
    print(json.dumps(peers), flush=True)
    """
)

# Connects; prints "ok <first line the server sent, or nothing>" or "error <exception> <errno>".
CONNECTOR = textwrap.dedent(
    """
    import socket, sys
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    except OSError as e:
        print("error", type(e).__name__, e.errno)
        sys.exit()
    try:
        print("ok", s.recv(100).decode().strip())
    except socket.timeout:
        print("ok")
    """
)


def start_listener(
    lab: Lab, host: str, address: str, port: int, count: int = 100, seconds: float = 10.0
) -> subprocess.Popen[str]:
    proc = lab.popen(
        host, [sys.executable, "-c", LISTENER, address, str(port), str(count), str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    peers: list[str] = json.loads(out.strip().splitlines()[-1])
    return peers


def connect(lab: Lab, host: str, address: str, port: int, timeout: float = 1.0) -> str:
    result = lab.run(
        host, [sys.executable, "-c", CONNECTOR, address, str(port), str(timeout)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout.strip()


def lab_namespaces(name: str) -> list[str]:
    return _netns.list_names(f"bx-{name}-")


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


# --------------------------------------------------------------------------- the real lab


@pytest.fixture
def small_lab(lab_factory, standin_coordinator) -> Lab:  # type: ignore[no-untyped-def]
    return lab_factory(hosts=2, coordinator_cmd=standin_coordinator)


@pytest.mark.lab
def test_three_hosts_come_up_fast(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    lab = lab_factory(hosts=3, coordinator_cmd=standin_coordinator)
    elapsed = time.monotonic() - started
    print(f"lab of 3 hosts up in {elapsed:.3f} s (lab's own count: {lab.setup_seconds:.3f} s)")
    assert elapsed < 4.0
    assert sorted(lab_namespaces(lab.name)) == sorted(lab.plan.all_netns())
    secret = lab.secret_file
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(secret.read_text().strip())) == 32
    state = json.loads(_state.state_file(lab.name).read_text())
    assert state["host_count"] == 3
    assert state["processes"][0]["role"] == "coordinator"


@pytest.mark.lab
def test_hosts_have_a_tcp_table_of_their_own(small_lab: Lab) -> None:
    """As a VM has from its own kernel: listing a host's sockets must not walk the machine's
    table. Only the table differs: the limits derived from it are the machine's."""
    if not os.path.exists("/proc/sys/net/ipv4/tcp_child_ehash_entries"):
        pytest.skip("kernel before 6.1: no per-namespace TCP tables, hosts share the machine's")
    machine = {key: _netns._read_proc_sys(key) for key in
               ("net/ipv4/tcp_ehash_entries", "net/ipv4/tcp_max_syn_backlog", "net/ipv4/tcp_max_tw_buckets")}
    for host in ("h1", "h2"):
        netns = small_lab.netns(host)
        assert _netns.read_sysctl(netns, "net/ipv4/tcp_ehash_entries") == str(HOST_TCP_TABLE)
        for key in ("net/ipv4/tcp_max_syn_backlog", "net/ipv4/tcp_max_tw_buckets"):
            assert _netns.read_sysctl(netns, key) == machine[key]
    # The coordinator's (and the routers') stay on the shared table (reported negative).
    coord = _netns.read_sysctl(small_lab.plan.coordinator_netns, "net/ipv4/tcp_ehash_entries")
    assert coord == str(-abs(int(machine["net/ipv4/tcp_ehash_entries"])))


@pytest.mark.lab
def test_host_reaches_coordinator_through_nat(small_lab: Lab) -> None:
    listener = start_listener(small_lab, "coord", "198.18.0.1", 8000, count=2)
    assert connect(small_lab, "h1", "198.18.0.1", 8000) == "ok served"
    assert connect(small_lab, "h2", "198.18.0.1", 8000) == "ok served"
    # The coordinator sees the routers' public addresses, never 10.0.<i>.2.
    assert finish(listener) == ["198.18.1.1", "198.18.1.2"]


@pytest.mark.lab
def test_inbound_connections_are_dropped(small_lab: Lab) -> None:
    h1 = small_lab.host("h1")
    listener = start_listener(small_lab, "h1", "0.0.0.0", 9000, seconds=8)
    # Sanity: the listener does serve, from inside its own host.
    assert connect(small_lab, "h1", h1.address, 9000) == "ok served"
    # The public address exists but silently drops what nobody asked for: a timeout, not a
    # refusal (Lambda's NAT behaves so).
    assert connect(small_lab, "coord", h1.public_address, 9000) == "error TimeoutError None"
    assert connect(small_lab, "h2", h1.public_address, 9000) == "error TimeoutError None"
    # The private address is not routed on the internet segment at all.
    assert connect(small_lab, "coord", h1.address, 9000).startswith("error")
    assert connect(small_lab, "h2", h1.address, 9000).startswith("error")
    assert finish(listener) == [h1.address]  # only the sanity connection got through


@pytest.mark.lab
def test_tcp_hole_punch_between_two_nated_hosts(small_lab: Lab) -> None:
    """Both hosts bind the same local port and connect to each other's public address:port
    at once; the NATs keep the port, conntrack treats the crossing SYNs as a simultaneous open,
    and one TCP connection results, carrying bulk data both ways."""
    punch = textwrap.dedent(
        """
        import socket, sys, threading, time
        port, peer, peer_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        deadline = time.monotonic() + 3.0
        while True:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                s.connect((peer, peer_port))
                break
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    print("error", type(e).__name__, e.errno, flush=True)
                    sys.exit(1)
                time.sleep(0.05)
        peer_seen = s.getpeername()
        s.settimeout(10)
        payload = bytes(range(256)) * 4096  # 1 MiB: punched paths must carry bulk, not 64 kB

        def send():
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)  # both send at once: read while sending
        sender.start()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        sender.join()
        print("ok", peer_seen[0], peer_seen[1], got == payload, flush=True)
        """
    )
    h1, h2 = small_lab.host("h1"), small_lab.host("h2")
    port = 40123
    procs = [
        small_lab.popen(host, [sys.executable, "-c", punch, str(port), peer.public_address, str(port)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for host, peer in (("h1", h2), ("h2", h1))
    ]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert outs == [f"ok {h2.public_address} {port} True", f"ok {h1.public_address} {port} True"]


@pytest.mark.lab
def test_port_forward_opens_one_port(small_lab: Lab) -> None:
    h1 = small_lab.host("h1")
    listener = start_listener(small_lab, "h1", "0.0.0.0", 9100, count=1)
    assert small_lab.port_forward("h1", 9100) == f"{h1.public_address}:9100"
    assert small_lab.port_forward("h1", 9100) == f"{h1.public_address}:9100"  # idempotent
    assert connect(small_lab, "coord", h1.public_address, 9100) == "ok served"
    assert finish(listener) == ["198.18.0.1"]
    assert connect(small_lab, "coord", h1.public_address, 9101) == "error TimeoutError None"
    assert load_lab(small_lab.name).port_forwards == (("h1", 9100),)


@pytest.mark.lab
def test_popen_and_exec_set_the_lab_environment(small_lab: Lab) -> None:
    out = small_lab.run("h2", ["sh", "-c", "echo $BOXER_LAB $BOXER_LAB_HOST $BOXER_COORDINATOR"],
                        capture_output=True, text=True, check=True).stdout
    assert out.split() == [small_lab.name, "h2", "198.18.0.1:7000"]
    result = subprocess.run(
        [sys.executable, "-m", "boxer", "lab", "exec", "--name", small_lab.name, "h1", "--",
         "sh", "-c", 'echo "$BOXER_LAB_HOST $BOXER_SECRET_FILE"; ip -o -4 addr show bx-lan; exit 7'],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 7, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first == f"h1 {small_lab.secret_file}"
    assert "10.0.1.2/24" in second


@pytest.mark.lab
def test_show_json_and_table(small_lab: Lab) -> None:
    runner = CliRunner()
    result = runner.invoke(lab_cli, ["show", "--name", small_lab.name, "-o", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["name"] == small_lab.name
    assert shown["coordinator"] == "198.18.0.1:7000"
    assert shown["coordinator_netns"] == f"bx-{small_lab.name}-coord"
    assert shown["internet_netns"] == f"bx-{small_lab.name}-inet"
    assert shown["secret_file"] == f"/run/boxer/lab/{small_lab.name}/secret"
    assert shown["hosts"][1] == {
        "name": "h2", "netns": f"bx-{small_lab.name}-h2", "address": "10.0.2.2",
        "public_address": "198.18.1.2", "router_netns": f"bx-{small_lab.name}-r2",
        "nat": "eim", "link": {"rtt_ms": 0.0, "jitter_ms": 0.0, "loss_pct": 0.0},
    }
    assert shown["mapping_timeout"] is None
    table = runner.invoke(lab_cli, ["show", "--name", small_lab.name]).output
    assert "h2    10.0.2.2  198.18.1.2" in table
    h2_row = next(line for line in table.splitlines() if line.startswith("h2 "))
    assert h2_row.split()[4:] == [f"bx-{small_lab.name}-r2", "eim", "-"]  # ROUTER, NAT, LINK


@pytest.mark.lab
def test_cli_errors_are_clear(small_lab: Lab, require_lab: None) -> None:
    runner = CliRunner()
    result = runner.invoke(lab_cli, ["up", "--name", small_lab.name])
    assert result.exit_code == 1
    assert f"lab '{small_lab.name}' already exists: run `boxer lab down --name {small_lab.name}`" in result.output
    result = runner.invoke(lab_cli, ["show", "--name", "t0nonex"])
    assert result.exit_code == 1 and "no lab named 't0nonex'" in result.output
    result = runner.invoke(lab_cli, ["up", "--name", "Bad-Name"])
    assert result.exit_code == 1 and "invalid lab name 'Bad-Name'" in result.output
    result = runner.invoke(lab_cli, ["up", "--name", "ok", "--hosts", "201"])
    assert result.exit_code == 2 and "201 is not in the range 1<=x<=200" in result.output


@pytest.mark.lab
def test_up_twice_is_refused_and_keeps_the_first(small_lab: Lab, standin_coordinator: list[str]) -> None:
    with pytest.raises(LabExistsError, match="boxer lab down"):
        lab_up(small_lab.name, 1, coordinator_cmd=standin_coordinator)
    assert sorted(lab_namespaces(small_lab.name)) == sorted(small_lab.plan.all_netns())
    assert load_lab(small_lab.name).hosts == small_lab.hosts


@pytest.mark.lab
def test_down_removes_everything_and_is_idempotent(small_lab: Lab) -> None:
    coordinator = small_lab.processes[0].pid
    assert _process.alive(coordinator)
    # Something a user left running inside; wait until it runs in h1 (past `ip netns exec`).
    helper = small_lab.popen("h1", ["sh", "-c", "echo inside; exec sleep 60"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None and helper.stdout.readline() == "inside\n"
        report = lab_down(small_lab.name)
        assert report.found and coordinator in report.killed and helper.pid in report.killed
        assert helper.wait(timeout=5) != 0
    finally:
        helper.kill()
        helper.communicate()
    assert lab_namespaces(small_lab.name) == []
    assert not _process.alive(coordinator)
    assert not _state.state_dir(small_lab.name).exists()
    again = lab_down(small_lab.name)
    assert not again.found
    with pytest.raises(LabNotFoundError):
        load_lab(small_lab.name)


@pytest.mark.lab
def test_down_after_a_crash_without_state(small_lab: Lab) -> None:
    coordinator = small_lab.processes[0].pid
    _state.remove(small_lab.name)  # as if `up` had died before writing, or /run was cleaned
    report = lab_down(small_lab.name)
    assert sorted(report.namespaces) == sorted(small_lab.plan.all_netns())
    assert lab_namespaces(small_lab.name) == []
    assert not _process.alive(coordinator)  # found through its namespace, not the state file


@pytest.mark.lab
def test_nothing_appears_in_the_root_namespace(lab_factory, standin_coordinator) -> None:  # type: ignore[no-untyped-def]
    before = root_links()
    routes_before = subprocess.run(["ip", "-o", "route"], capture_output=True, text=True, check=True).stdout
    lab = lab_factory(hosts=2, coordinator_cmd=standin_coordinator)
    assert root_links() == before
    assert subprocess.run(["ip", "-o", "route"], capture_output=True, text=True, check=True).stdout == routes_before
    lab_down(lab.name)
    assert root_links() == before


@pytest.mark.lab
def test_a_coordinator_that_fails_leaves_nothing_behind(lab_factory) -> None:  # type: ignore[no-untyped-def]
    failing = [sys.executable, "-c", "import sys; print('boom: bad config', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(CoordinatorStartError, match="exited before it was ready") as caught:
        lab_factory(hosts=1, coordinator_cmd=failing)
    assert "boom: bad config" in caught.value.log_tail
    name = Path(caught.value.log_path).parent.name
    assert lab_namespaces(name) == []
    assert not _state.state_dir(name).exists()


@pytest.mark.lab
def test_real_coordinator_becomes_ready(lab: Lab) -> None:
    """The default command (`python -m boxer coordinator`) honours --listen and --ready-file."""
    assert _process.is_ours(lab.processes[0].pid, lab.coordinator_netns, lab.processes[0].argv)
    assert connect(lab, "h1", "198.18.0.1", 7000, timeout=0.5).startswith("ok")

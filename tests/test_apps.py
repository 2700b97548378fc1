"""Real applications, unmodified, in the lab (issue 3): every program is a Debian binary (or a
JVM/Python program using only the standard library) under `boxer run` on a host behind its own
NAT. One 5-host lab for the module:

    h1  nginx reverse proxy "proxy" (master + 2 workers sharing the listener)
    h2  backend "b1" (python http.server), redis primary "kv"
    h3  backend "b2", redis replica "kvr", asyncio server "aio"
    h4  backend "b3", memcached "mc" (4 threads, libevent), Java server "jsrv"
    h5  the clients: curl, redis-cli, memcslap/memccapable, Java client, asyncio client
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxer.agent.agent import Agent
from boxer.lab._plan import COORDINATOR_PORT

DATA = Path(__file__).parent / "apps_data"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    print("skipping: application lab tests need root (network namespaces, iptables)")
    pytest.skip("application lab tests need root (network namespaces, iptables)", allow_module_level=True)
for _tool in ("iptables", "redis-server", "redis-cli", "nginx", "curl", "memcached"):
    if shutil.which(_tool) is None:
        print(f"skipping: application lab tests need {_tool} (scripts/install-deps.sh)")
        pytest.skip(f"application lab tests need {_tool}", allow_module_level=True)


def boxer_run(name: str, *argv: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [*BOXER, "run", "--name", name, *extra, "--", *argv]


def app(lab, host: str, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.run(host, boxer_run(name, *argv), capture_output=True, text=True, timeout=timeout)


PROBE = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()"


def wait_listening(lab, target: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc = app(lab, "h5", "probe", sys.executable, "-c", PROBE, target, str(port), timeout=30)
        if proc.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{target}:{port} did not come up: {proc.stderr[-2000:]}"
        time.sleep(0.3)


class Apps:
    def __init__(self, lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, host: str, name: str, *argv: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = self.lab.popen(host, boxer_run(name, *argv), **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    from boxer.lab import lab_down, lab_up

    name = f"ap{os.getpid() % 100000}"
    tmp = tmp_path_factory.mktemp("apps")
    lab = lab_up(name, hosts=5)
    running = Apps(lab, tmp)
    try:
        for i, host in ((1, "h2"), (2, "h3"), (3, "h4")):
            root = tmp / f"b{i}"
            root.mkdir()
            (root / "who").write_text(f"backend b{i}\n")
            running.start(host, f"b{i}", sys.executable, "-m", "http.server", "8081", "--directory", str(root))
        running.start("h2", "kv", "redis-server", "--port", "6379", "--save", "", "--appendonly", "no",
                      "--protected-mode", "no")
        running.start("h4", "mc", "memcached", "-u", "root", "-p", "11211", "-U", "0", "-t", "4")
        running.start("h3", "aio", sys.executable, str(DATA / "aio.py"), "server", "9000")
        for target, port in (("b1", 8081), ("b2", 8081), ("b3", 8081), ("kv", 6379), ("mc", 11211),
                             ("aio", 9000)):
            wait_listening(lab, target, port)
        yield running
    finally:
        running.stop()
        lab_down(name)


# ---- nginx ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx(apps):
    d = apps.tmp / "nginx"
    d.mkdir()
    (d / "nginx.conf").write_text((DATA / "nginx.conf.in").read_text().format(dir=d))
    with open(d / "stderr", "w") as err:
        proc = apps.start("h1", "proxy", "nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", "stderr",
                          stderr=err)
    try:
        wait_listening(apps.lab, "proxy", 8080)
    finally:
        assert proc.poll() is None, (d / "stderr").read_text()
    return d


def test_nginx_reverse_proxy_reaches_every_overlay_backend(apps, nginx):
    n = 12
    script = f"for i in $(seq {n}); do curl -sS --max-time 10 http://proxy:8080/who; done"
    proc = app(apps.lab, "h5", "curler", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.splitlines()
    assert len(answers) == n
    assert set(answers) == {"backend b1", "backend b2", "backend b3"}  # round robin: all three
    # Every connection accepted exactly once, by some worker, from the client's overlay address.
    deadline = time.monotonic() + 5
    while len((nginx / "access.log").read_text().splitlines()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    log = [line.split() for line in (nginx / "access.log").read_text().splitlines()]
    assert len(log) == n
    assert {fields[3] for fields in log} == {"200"}
    assert all(re.fullmatch(r"100\.\d+\.\d+\.\d+", fields[1]) for fields in log)
    assert all(re.fullmatch(r"100\.\d+\.\d+\.\d+:8081", fields[2]) for fields in log)
    master = int((nginx / "nginx.pid").read_text())
    assert master not in {int(fields[0]) for fields in log}  # served by the workers, not the master


def _ids(pid: int) -> tuple[int, int, int]:
    """(parent pid, real uid, real gid) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["PPid"]), int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_nginx_workers_running_as_nobody_accept_and_proxy_through_the_overlay(apps, nginx):
    """`user nobody nogroup;`: the master (root) listens, its workers switch to nobody and then
    accept every connection and connect to every upstream through the agent. Before the fix the
    workers could not open the agent's socket (0600, root): every request failed."""
    master = int((nginx / "nginx.pid").read_text())
    assert _ids(master)[1:] == (0, 0)
    workers = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    assert len(workers) == 2 and all(_ids(w) == (master, 65534, 65534) for w in workers)
    before = len((nginx / "access.log").read_text().splitlines())
    proc = app(apps.lab, "h5", "curlnobody", "sh", "-c",
               "for i in $(seq 6); do curl -sS --max-time 5 http://proxy:8080/who; done")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 6, proc.stderr
    assert set(proc.stdout.splitlines()) <= {"backend b1", "backend b2", "backend b3"}
    deadline = time.monotonic() + 5
    while len((nginx / "access.log").read_text().splitlines()) < before + 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = [line.split() for line in (nginx / "access.log").read_text().splitlines()[before:]]
    assert len(log) == 6 and {int(fields[0]) for fields in log} <= set(workers)  # served by the workers
    assert all(re.fullmatch(r"100\.\d+\.\d+\.\d+", fields[1]) and fields[3] == "200" for fields in log)
    assert "cannot reach the agent" not in (nginx / "stderr").read_text()


def test_nginx_concurrent_clients_each_answered_once(apps, nginx):
    before = len((nginx / "access.log").read_text().splitlines())
    script = ("for i in $(seq 24); do curl -sS --max-time 10 -o /dev/null -w '%{http_code}\\n' "
              "http://proxy:8080/who & done; wait")
    proc = app(apps.lab, "h5", "burst", "sh", "-c", script)
    assert proc.stdout.split() == ["200"] * 24, proc.stderr
    deadline = time.monotonic() + 5
    while len((nginx / "access.log").read_text().splitlines()) < before + 24 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len((nginx / "access.log").read_text().splitlines()) == before + 24


def test_nginx_reuseport_listeners_share_one_overlay_port(apps, nginx):
    """`listen 8090 reuseport`: several sockets on one port (SO_REUSEPORT), one per worker; the
    kernel spreads the agent's wake connections over them and each request is served once."""
    before = len((nginx / "access.log").read_text().splitlines())
    script = ("for i in $(seq 16); do curl -sS --max-time 10 -o /dev/null -w '%{http_code}\\n' "
              "http://proxy:8090/who & done; wait")
    proc = app(apps.lab, "h5", "reuse", "sh", "-c", script)
    assert proc.stdout.split() == ["200"] * 16, proc.stderr
    deadline = time.monotonic() + 5
    while len((nginx / "access.log").read_text().splitlines()) < before + 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len((nginx / "access.log").read_text().splitlines()) == before + 16


# ---- redis replication ---------------------------------------------------------------------------


def test_redis_replica_follows_the_primary_by_overlay_name(apps):
    apps.start("h3", "kvr", "redis-server", "--port", "6379", "--save", "", "--appendonly", "no",
               "--protected-mode", "no", "--replicaof", "kv", "6379")
    lab = apps.lab
    deadline = time.monotonic() + 30
    while True:
        info = app(lab, "h5", "rcli", "redis-cli", "-h", "kvr", "info", "replication").stdout
        if "master_link_status:up" in info:
            break
        assert time.monotonic() < deadline, f"replica never linked: {info}"
        time.sleep(0.5)
    replica_addr = app(lab, "h5", "rcli", "getent", "hosts", "kvr").stdout.split()[0]
    primary = app(lab, "h5", "rcli", "redis-cli", "-h", "kv", "info", "replication").stdout
    assert f"slave0:ip={replica_addr},port=6379,state=online" in primary, primary
    assert app(lab, "h5", "rcli", "redis-cli", "-h", "kv", "set", "city", "zurich").stdout.strip() == "OK"
    deadline = time.monotonic() + 10
    while app(lab, "h5", "rcli", "redis-cli", "-h", "kvr", "get", "city").stdout.strip() != "zurich":
        assert time.monotonic() < deadline, "write to the primary never reached the replica"
        time.sleep(0.2)
    # BGSAVE forks the primary while the replica's connection is open; both keep working.
    assert "Background saving started" in app(lab, "h5", "rcli", "redis-cli", "-h", "kv", "bgsave").stdout
    assert app(lab, "h5", "rcli", "redis-cli", "-h", "kv", "set", "after", "fork").stdout.strip() == "OK"
    deadline = time.monotonic() + 10
    while app(lab, "h5", "rcli", "redis-cli", "-h", "kvr", "get", "after").stdout.strip() != "fork":
        assert time.monotonic() < deadline, "replication stopped after BGSAVE"
        time.sleep(0.2)


# ---- memcached -----------------------------------------------------------------------------------


def test_memcached_under_memcslap_load(apps):
    proc = app(apps.lab, "h5", "slap", "memcslap", "--servers=mc:11211", "--concurrency=8",
               "--execute-number=500", "--non-blocking", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"Time to set\s+4000 keys by\s+8 threads", proc.stdout), proc.stdout
    stats = app(apps.lab, "h5", "stat", "memcstat", "--servers=mc:11211").stdout
    sets = int(re.search(r"cmd_set: (\d+)", stats).group(1))
    assert sets >= 8 * 500  # every client's load reached the server
    assert int(re.search(r"threads: (\d+)", stats).group(1)) == 4


def test_memcached_protocol_conformance(apps):
    tool = shutil.which("memccapable") or shutil.which("memcapable")
    if tool is None:
        pytest.skip("memccapable not installed (libmemcached-tools)")
    proc = app(apps.lab, "h5", "capable", tool, "-h", "mc", "-p", "11211", "-a", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed" not in proc.stdout.lower().replace("0 failed", ""), proc.stdout


# ---- the JVM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def java_classes(apps):
    if shutil.which("javac") is None or shutil.which("java") is None:
        print("skipping: no JDK (javac/java) on this machine")
        pytest.skip("no JDK (javac/java) on this machine")
    out = apps.tmp / "classes"
    out.mkdir()
    subprocess.run(["javac", "-d", str(out), str(DATA / "EchoServer.java"), str(DATA / "EchoClient.java")],
                   check=True, capture_output=True, timeout=120)
    return out


def test_java_dual_stack_sockets(apps, java_classes):
    apps.start("h4", "jsrv", "java", "-cp", str(java_classes), "EchoServer", "7070")
    wait_listening(apps.lab, "jsrv", 7070, timeout=60)
    proc = app(apps.lab, "h5", "jcli", "java", "-cp", str(java_classes), "EchoClient", "jsrv", "7070",
               timeout=90)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    jsrv = lines["resolved"]
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", jsrv)
    own = lines["local"]
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", own)  # the v4-mapped overlay address, shown as v4
    for kind, word in (("blocking", "hello"), ("timeout", "timed"), ("nio", "nio")):
        assert lines[kind] == f"{word} from {own} at {jsrv} on jsrv", lines


# ---- asyncio -------------------------------------------------------------------------------------


def test_asyncio_server_and_client(apps):
    proc = app(apps.lab, "h5", "aioc", sys.executable, str(DATA / "aio.py"), "client", "aio", "9000", "50")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["errors"] == []
    assert len(result["answers"]) == 50
    own = result["own"]
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", own)
    # The server saw each client's overlay address (getpeername on the accepted socket).
    assert sorted(result["answers"]) == sorted(f"msg{i} {own} aio" for i in range(50))
    assert result["refused_errno"] == 111  # ECONNREFUSED through the event loop


# ---- resource limits -----------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def settle(pid: int, seconds: float = 3.0) -> int:
    """The fd count once it stopped changing (the agent refills its ticket pools)."""
    last, stable_since = fd_count(pid), time.monotonic()
    deadline = time.monotonic() + seconds * 3
    while time.monotonic() < deadline and time.monotonic() - stable_since < seconds / 3:
        time.sleep(0.1)
        now = fd_count(pid)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def agent_tcp_peer_ports(lab, host: str, pid: int) -> dict[int, int]:
    """How many TCP sockets process `pid` holds to each remote port (ss in its namespace)."""
    out = lab.run(host, ["ss", "-Htanp"], capture_output=True, text=True, check=True).stdout
    ports = [int(line.split()[4].rpartition(":")[2]) for line in out.splitlines()
             if f"pid={pid}," in line and line.split()[0] != "LISTEN"]
    return {port: ports.count(port) for port in sorted(set(ports))}


def test_900_concurrent_connections_under_rlimit_nofile_1024(apps):
    """An instance limited to 1024 descriptors (Lambda's limit) holds 900 overlay connections at
    once; afterwards neither the application nor the agent holds more descriptors than before."""
    lab = apps.lab
    # Only the application is limited: the agent cannot hold 900 not-yet-accepted connections
    # within 1024 descriptors yet, and a burst larger than the listen backlog overflows the
    # wake connections (see docs/compatibility.md): backlog 1024 here.
    server = apps.lab.popen("h3", boxer_run("many", "prlimit", "--nofile=1024:1024", "--", sys.executable,
                                            str(DATA / "aio.py"), "server", "9100"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "BACKLOG": "1024"})
    apps.procs.append(server)
    wait_listening(lab, "many", 9100)
    agent_pid = server.pid  # `ip netns exec` execs: the agent has this pid
    assert "boxer" in Path(f"/proc/{agent_pid}/cmdline").read_text()
    (app_pid,) = children(agent_pid)
    assert Path(f"/proc/{app_pid}/limits").read_text().count("1024") >= 2
    agent_before, app_before = settle(agent_pid), settle(app_pid)

    # 900 punches at once queue up in the agents and the coordinator: a longer connect deadline.
    clients = [lab.popen(host, boxer_run(f"hold{i}", "prlimit", "--nofile=4096:4096", "--", sys.executable,
                                         str(DATA / "aio.py"), "hold", "many", "9100", "300",
                                         extra=("--connect-timeout", "30")),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i, host in enumerate(("h1", "h2", "h5"))]
    try:
        results = [json.loads(c.stdout.readline() or "{}") for c in clients]
        opened = sum(r.get("open", 0) for r in results)
        # Known (docs/compatibility.md): under this load about 1 punch in 1000 misses the agent's
        # 3 s punch deadline. Anything else, or more of it, fails the test.
        errors = [e for r in results for e in r.get("errors", [])]
        if not all(e.startswith("TimeoutError(110") for e in errors):
            for c in clients:
                c.stdin.close()
            raise AssertionError(f"{results}\n" + "\n---\n".join(c.stderr.read()[-3000:] for c in clients))
        assert opened >= 891, results
        print(f"900 connections: {opened} opened, {900 - opened} ETIMEDOUT")
        assert sum(r["answered"] for r in results) == opened
        assert fd_count(app_pid) >= app_before + opened  # all of them open at the server at once
        for c in clients:
            c.stdin.close()
            c.wait(30)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
            for f in (c.stdout, c.stderr):
                f.close()
    assert settle(app_pid) == app_before
    # Afterwards the agent holds rendezvous connections (its two ticket pools, 2 x 8, seen at
    # 16 to 18: a refill in flight) and no other TCP socket: every path opened for these
    # connections is closed, the relay's losers too (they leaked until the garbage collector
    # ran, 4 to 25 of them a burst with a short relay delay). With that short delay, unpaired
    # relay halves about 4 s old are still open when the counts settle (races started after
    # the clients left): they go by the punch deadline (3 s) and the relay's pairing timeout.
    deadline = time.monotonic() + 3.0 + 5.0 + 2.0
    while set(peers := agent_tcp_peer_ports(lab, "h3", agent_pid)) != {COORDINATOR_PORT} \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert set(peers) == {COORDINATOR_PORT} and peers[COORDINATOR_PORT] <= 2 * Agent.ticket_pool_size + 2, peers
    assert settle(agent_pid) <= agent_before + 2  # ticket pools may differ by a refill in flight


# ---- names ---------------------------------------------------------------------------------------


def test_name_lookups_as_applications_make_them(apps):
    proc = app(apps.lab, "h5", "namer", sys.executable, str(DATA / "names.py"))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    kv = seen["byname"]
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", kv)
    assert seen["hostname"] == "namer"
    assert seen["fqdn"] == "namer"
    assert seen["unspec"] == [kv]
    assert seen["v6mapped"] == [f"::ffff:{kv}"]
    assert seen["v6_only"] == socket_eai_noname_or_nodata()
    assert seen["byaddr"] == "kv"
    assert seen["nameinfo"] == "kv"


def socket_eai_noname_or_nodata() -> int:
    import socket

    # AF_INET6 without AI_V4MAPPED: an IPv4-only host has no answer, as glibc says for one.
    return socket.EAI_NONAME


# Issue 12 item 1: the hosts file the lab host sees (bind-mounted over /etc/hosts in a mount
# namespace of the test's own, for the agent and the app alike). "kv" is also an overlay name
# here: with `files dns`, the file wins, as it would over DNS; "kv.boxer" is explicitly ours.
LAB_HOSTS = """127.0.0.1 localhost
127.0.1.1 labmachine.example.org labmachine
::1 localhost ip6-localhost ip6-loopback
10.9.9.9 kv printer
"""


def in_own_files(files: Path, *argv: str) -> list[str]:
    """argv with files/{hosts,nsswitch.conf,resolv.conf} in place of /etc's, in a mount namespace
    of its own (nothing outside it changes)."""
    binds = " && ".join(f'mount --bind "$1/{f}" /etc/{f}' for f in ("hosts", "nsswitch.conf", "resolv.conf"))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{binds} && shift && exec "$@"', "sh",
            str(files), *argv]


@pytest.mark.parametrize("order", ["files dns", "dns files"])
def test_names_in_the_hosts_file_resolve_as_without_boxer_in_nsswitch_order(apps, tmp_path, order):
    (tmp_path / "hosts").write_text(LAB_HOSTS)
    (tmp_path / "nsswitch.conf").write_text(f"hosts: {order}\n")
    # A DNS server that refuses at once: `dns` before `files` must not wait out timeouts.
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    local = ["localhost", "ip6-localhost", "ip6-loopback", "labmachine", "labmachine.example.org", "printer"]
    script = str(DATA / "local_names.py")
    plain = apps.lab.run("h5", in_own_files(tmp_path, sys.executable, script, *local, "kv"),
                         capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    wrapped = apps.lab.run("h5", in_own_files(tmp_path, *boxer_run("own", sys.executable, script, *local,
                                                                            "kv", "kv.boxer", "own")),
                           capture_output=True, text=True, timeout=60)
    assert wrapped.returncode == 0, wrapped.stderr
    before, under = json.loads(plain.stdout), json.loads(wrapped.stdout)
    for name in [*local, "127.0.0.1", "::1"]:
        assert under[name] == before[name], name
    assert before["ip6-localhost"]["inet6"] == ["AF_INET6 ::1"]  # the file did reach libc
    overlay = under["kv.boxer"]["byname"]
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", overlay)
    if order == "files dns":
        assert under["kv"] == before["kv"] and under["kv"]["byname"] == "10.9.9.9"
    else:
        assert under["kv"]["byname"] == overlay  # the overlay stands where dns does
    # Our own name is our overlay address, as a host's own name is in its /etc/hosts.
    assert re.fullmatch(r"100\.\d+\.\d+\.\d+", under["own"]["byname"]) and under["own"]["byname"] != overlay


def test_an_instance_connects_to_its_own_name(apps):
    proc = app(apps.lab, "h5", "selfish", sys.executable, str(DATA / "self_connect.py"))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    own = seen["addr"]
    assert seen["name"] == "selfish" and re.fullmatch(r"100\.\d+\.\d+\.\d+", own)
    assert seen["reply"] == "world" and seen["server"]["data"] == "hello"
    # Both ends are the instance's own overlay address, as on a host talking to itself.
    assert seen["client"] == {"local": own, "peer": own}
    assert (seen["server"]["peer"], seen["server"]["local"]) == (own, own)
    assert seen["nothing_listening"] == errno.ECONNREFUSED

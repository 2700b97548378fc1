"""The C interposer, preloaded into small C test programs (tests/interposer_progs/probe.c) and
real Debian binaries, against tests/fake_agent.py (the agent's side of the wire protocol).

The probe checks return codes and errno itself and prints key=value lines; these tests assert
the values and what the agent was asked, in order."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from fake_agent import FakeAgent

from boxer.agent import ipc

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "boxer" / "libboxer_preload.so"
PROGS = Path(__file__).resolve().parent / "interposer_progs"
SOURCES = sorted((ROOT / "interposer").glob("*.c"))

OWN = "100.64.0.3"  # the instance's overlay address (BOXER_ADDR)
KV = "100.64.0.7"  # another instance, "kv-1"
PEER = ("100.64.0.9", 41000)  # where inbound overlay connections come from


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gcc() -> str:
    path = shutil.which("gcc")
    if path is None:
        pytest.skip("gcc not found: cannot build the C test programs")
    return path


@pytest.fixture(scope="session")
def lib() -> Path:
    other = os.environ.get("BOXER_TEST_PRELOAD")  # another build, e.g. main's, to compare
    if other:
        return Path(other)
    if not LIB.exists():
        pytest.skip(f"{LIB} missing: run `pip install -e .` to build the interposer")
    newest = max(p.stat().st_mtime for p in SOURCES)
    if LIB.stat().st_mtime < newest:
        pytest.skip(f"{LIB} is older than interposer/*.c: rerun `pip install -e .`")
    return LIB


@pytest.fixture(scope="session")
def probe(gcc: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("progs") / "probe"
    subprocess.run([gcc, "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(out),
                    str(PROGS / "probe.c")], check=True)
    return out


@pytest.fixture
def agent(request):
    # AF_UNIX paths are limited to 108 bytes: keep it short rather than under tmp_path.
    d = tempfile.mkdtemp(prefix="bx-")
    a = FakeAgent(os.path.join(d, "agent.sock"), own_addr=OWN)
    a.names.members["kv-1"] = KV

    def cleanup() -> None:
        a.close()
        shutil.rmtree(d, ignore_errors=True)

    request.addfinalizer(cleanup)
    return a


@pytest.fixture
def echo_port(agent, request) -> int:
    """A loopback echo server; the agent routes kv-1:6379 to it."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    def echo(c: socket.socket) -> None:
        try:
            while data := c.recv(4096):
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def cleanup() -> None:
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        t.join(5)
        for c in conns:
            c.close()

    request.addfinalizer(cleanup)
    port = srv.getsockname()[1]
    agent.routes[(KV, 6379)] = port
    return port


def env_for(agent: FakeAgent | None, lib: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXER_")}
    env.update(LD_PRELOAD=str(lib), BOXER_NAME="kv-3", BOXER_ADDR=OWN)
    if agent is not None:
        env["BOXER_AGENT_SOCK"] = agent.path
    env.update(extra)
    return env


def parse(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def run(probe: Path, env: dict[str, str], *args: str, timeout: float = 20) -> dict[str, str]:
    r = subprocess.run(check=False, args=[str(probe), *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"probe {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return parse(r.stdout)


class Running:
    """A probe in the background whose key=value lines we wait for one by one."""

    def __init__(self, probe: Path, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([str(probe), *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: dict[str, list[str]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, key: str, timeout: float = 10) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"probe printed no {key!r} within {timeout}s") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"probe ended before {key!r}: {err}")
            k, _, v = line.partition("=")
            self.seen.setdefault(k, []).append(v)
            if k == key:
                return v

    def finish(self) -> None:
        rc = self.proc.wait(timeout=10)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert rc == 0, f"probe failed ({rc}): {err}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.fixture
def background(request):
    started: list[Running] = []

    def start(probe: Path, env: dict[str, str], *args: str) -> Running:
        r = Running(probe, env, *args)
        started.append(r)
        return r

    request.addfinalizer(lambda: [r.kill() for r in started])
    return start


# ---- the wire format ---------------------------------------------------------------------------


def test_proto_header_matches_ipc(gcc, tmp_path):
    src = tmp_path / "layout.c"
    src.write_text(
        '#include <stddef.h>\n#include <stdio.h>\n#include "boxer_proto.h"\n'
        "int main(void) { printf(\"%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %#x\\n\","
        " sizeof(struct boxer_msg), offsetof(struct boxer_msg, op),"
        " offsetof(struct boxer_msg, status), offsetof(struct boxer_msg, flags),"
        " offsetof(struct boxer_msg, pid), offsetof(struct boxer_msg, family),"
        " offsetof(struct boxer_msg, port), offsetof(struct boxer_msg, token),"
        " offsetof(struct boxer_msg, addr), offsetof(struct boxer_msg, name), BOXER_MAGIC);"
        " return 0; }\n")
    subprocess.run([gcc, "-I", str(ROOT / "interposer"), "-o", str(tmp_path / "layout"),
                    str(src)], check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                         check=True).stdout.split()
    # boxer.agent.ipc's layout "=IIIIiHHI16s256s", field by field: offset of op, status, ... name.
    codes = ["I", "I", "I", "I", "i", "H", "H", "I", "16s", "256s"]
    offsets = [struct.calcsize("=" + "".join(codes[:k])) for k in range(1, 10)]
    assert "=" + "".join(codes) == ipc._LAYOUT.format
    assert int(out[0]) == ipc.SIZE == 300
    assert [int(x) for x in out[1:10]] == offsets[:9]
    assert int(out[10], 16) == ipc.MAGIC


# ---- transparency and HELLO --------------------------------------------------------------------


def test_transparent_without_agent_sock(probe, lib, agent, echo_port):
    env = env_for(None, lib)  # BOXER_NAME and BOXER_ADDR set, BOXER_AGENT_SOCK not
    out = run(probe, env, "hostname")
    assert out["hostname"] == socket.gethostname() != "kv-3"
    out = run(probe, env, "connect", "inet", "127.0.0.1", str(echo_port))
    assert out["connect"] == "OK" and out["echo"] == "OK"
    assert out["peername"] == f"127.0.0.1:{echo_port}"
    out = run(probe, env, "bind", "inet", OWN)  # the kernel's own answer: not a local address
    assert out["bind"] == "EADDRNOTAVAIL"
    assert agent.requests == []


def test_hello_carries_the_pid(probe, lib, agent, background):
    r = background(probe, env_for(agent, lib), "hostname")
    assert r.expect("hostname") == "kv-3"
    r.finish()
    hello = agent.wait_for(lambda m: m.op == ipc.Op.HELLO)
    assert hello.pid == r.proc.pid


def test_agent_absent_fails_calls_like_syscalls(probe, lib, tmp_path):
    env = env_for(None, lib, BOXER_AGENT_SOCK=str(tmp_path / "nobody.sock"))
    r = subprocess.run(check=False, args=[str(probe), "connect", "inet", KV, "6379"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout)["connect"] == "ENETUNREACH"
    assert re.search(r"boxer-preload\[\d+\] \w+: HELLO: cannot reach the agent", r.stderr)
    out = run(probe, env, "gai", "kv-1")
    assert out["gai.default"] == "EAI_AGAIN"
    assert out["gai.numeric_libc"].startswith("OK inet/stream/6/127.0.0.1:1")


# ---- connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["inet", "inet6"])
@pytest.mark.parametrize("flags", [[], ["cloexec"]])
def test_connect_overlay_keeps_fd_flags_and_reports_overlay_addresses(
        probe, lib, agent, echo_port, family, flags):
    out = run(probe, env_for(agent, lib), "connect", family, KV, "6379", *flags)
    assert out["connect"] == "OK"
    assert out["fd_open"] == "1"
    assert out["nonblock"] == ("1" if "nonblock" in flags else "0")
    assert out["cloexec"] == ("1" if "cloexec" in flags else "0")
    if family == "inet":
        assert re.fullmatch(r"100\.64\.0\.3:5\d{4}", out["sockname"])
        assert out["peername"] == f"{KV}:6379"
        assert out["short_len"] == "16"
    else:
        assert re.fullmatch(r"\[::ffff:100\.64\.0\.3\]:5\d{4}", out["sockname"])
        assert out["peername"] == f"[::ffff:{KV}]:6379"
        assert out["short_len"] == "28"
    assert out["short_untouched"] == "1"  # 4-byte buffer: nothing written past it
    assert out["reconnect"] == "EISCONN"
    assert out["echo"] == "OK"
    assert ("CONNECT", KV, 6379) in agent.ops()


@pytest.mark.parametrize("err,name", [(None, "ECONNREFUSED"), (110, "ETIMEDOUT"),
                                      (113, "EHOSTUNREACH")])
def test_connect_errors_come_from_the_agent(probe, lib, agent, err, name):
    if err is not None:
        agent.connect_errors[(KV, 80)] = err
    out = run(probe, env_for(agent, lib), "connect", "inet", KV, "80")
    assert out["connect"] == name


# ---- non-blocking connect: EINPROGRESS, then the outcome through the app's own event loop ------


@pytest.mark.parametrize("family", ["inet", "inet6"])
@pytest.mark.parametrize("mode,opts", [("poll", []), ("select", []), ("epoll", []),
                                       ("epollet", ["early"]), ("epoll", ["early", "nodelay"])])
def test_nonblocking_connect_completes_in_the_apps_event_loop(
        probe, lib, agent, echo_port, family, mode, opts):
    agent.connect_delay = 0.3  # the punch: the app's thread must not wait for it
    out = run(probe, env_for(agent, lib), "aconnect", family, KV, "6379", mode, *opts)
    assert out["connect"] == "EINPROGRESS"
    assert int(out["stall_us"]) < 100_000, "connect() waited for the agent"
    assert out["connect_again"] == "EALREADY"
    assert out["peername_pending"] == "ENOTCONN"
    assert out["wake_out"] == "1"
    assert 200_000 < int(out["wait_us"]) < 5_000_000
    if mode.startswith("epoll"):
        assert out["wake_data"] == "feed"  # the app's own epoll data, on the swapped socket
        assert out["wake_hup"] == "0"  # the placeholder's HUP never reaches the app
        assert out["epoll_after"] == "1"
    assert out["so_error"] == "OK" and out["so_error_again"] == "OK"
    assert out["connect_after"] == "OK"  # like the kernel: 0 once, then EISCONN
    assert out["connect_after2"] == "EISCONN"
    assert out["nodelay"] == ("1" if "nodelay" in opts else "0")
    assert out["nonblock"] == "1" and out["cloexec"] == "1"
    if family == "inet":
        assert re.fullmatch(r"100\.64\.0\.3:5\d{4}", out["sockname"])
        assert out["peername"] == f"{KV}:6379"
    else:
        assert out["peername"] == f"[::ffff:{KV}]:6379"
    assert out["echo"] == "OK"


@pytest.mark.parametrize("mode", ["poll", "epoll"])
@pytest.mark.parametrize("err,name", [(None, "ECONNREFUSED"), (110, "ETIMEDOUT"),
                                      (113, "EHOSTUNREACH")])
def test_nonblocking_connect_failure_is_so_error(probe, lib, agent, mode, err, name):
    agent.connect_delay = 0.2
    if err is not None:
        agent.connect_errors[(KV, 80)] = err
    out = run(probe, env_for(agent, lib), "aconnect", "inet", KV, "80", mode)
    assert out["connect"] == "EINPROGRESS"
    assert out["wake_out"] == "1"
    assert out["so_error"] == name
    assert out["so_error_again"] == "OK"


def test_nonblocking_connect_closed_while_pending_leaves_the_number_alone(probe, lib, agent,
                                                                          echo_port):
    agent.connect_delay = 0.1
    out = run(probe, env_for(agent, lib), "aconnect", "inet", KV, "6379", "poll", "closefirst")
    assert out["connect"] == "EINPROGRESS"
    assert out["other_revents_hup"] == "1"  # still a fresh socket, not our connection
    assert out["other_peername"] == "ENOTCONN"


def test_nonblocking_connect_burst_stays_within_rlimit_nofile_1024(probe, lib, agent, echo_port):
    """900 connects at once with 1024 descriptors: in-flight connects are capped (each holds an
    agent connection), the rest wait; all complete, nothing leaks."""
    agent.connect_delay = 0.005
    out = run(probe, env_for(agent, lib), "aburst", KV, "6379", "900", timeout=120)
    assert int(out["inprogress"]) >= 64
    assert int(out["inprogress"]) + int(out["immediate"]) == 900
    assert out["failed"] == "0"
    # The app's sockets and the connect worker's eventfd (one per process): no agent connection
    # or placeholder left over.
    assert out["fds_open"] == "901"
    assert out["fds_leaked"] == "1"


def test_connect_outside_the_overlay_goes_to_libc(probe, lib, agent, echo_port):
    out = run(probe, env_for(agent, lib), "connect", "inet", "127.0.0.1", str(echo_port))
    assert out["connect"] == "OK" and out["echo"] == "OK"
    assert out["peername"] == f"127.0.0.1:{echo_port}"
    assert out["sockname"].startswith("127.0.0.1:")
    assert not [op for op in agent.ops() if op[0] == "CONNECT"]


def test_dup_before_connect_keeps_the_old_socket(probe, lib, agent, echo_port):
    out = run(probe, env_for(agent, lib), "dupconn", "inet", KV, "6379")
    assert out["before_peer"] == "ENOTCONN"
    assert out["after_peer"] == out["dup2_peer"] == out["after_close_peer"] == f"{KV}:6379"
    assert out["echo"] == "OK"


def test_many_threads_connect_at_once(probe, lib, agent, echo_port):
    out = run(probe, env_for(agent, lib), "threads", "32", "inet6", KV, "6379", timeout=40)
    assert out["connected"] == str(32 * 3)
    assert sum(op[0] == "CONNECT" for op in agent.ops()) == 96


def test_fork_while_threads_use_the_table(probe, lib, agent, echo_port):
    out = run(probe, env_for(agent, lib), "fork", "40", KV, "6379", timeout=40)
    assert out["children_ok"] == "40"
    assert sum(op[0] == "CONNECT" for op in agent.ops()) == 5  # children 0, 8, 16, 24, 32


# ---- bind, listen, accept ----------------------------------------------------------------------


@pytest.mark.parametrize("family,addr,result,name", [
    ("inet", OWN, "OK", r"100\.64\.0\.3:\d+"),
    ("inet6", OWN, "OK", r"\[::ffff:100\.64\.0\.3\]:\d+"),
    ("inet", "100.64.0.4", "EADDRNOTAVAIL", None),
    ("inet6", "100.64.0.4", "EADDRNOTAVAIL", None),
    ("inet", "127.0.0.1", "OK", r"127\.0\.0\.1:\d+"),
])
def test_bind(probe, lib, agent, family, addr, result, name):
    out = run(probe, env_for(agent, lib), "bind", family, addr)
    assert out["bind"] == result
    if name:
        assert re.fullmatch(name, out["sockname"])


def _serve_one(agent, r, family: str, overlay_bound: bool) -> None:
    """The agent delivers one overlay connection; checks what the app saw."""
    port = int(r.expect("port"))
    listen = agent.wait_for(lambda m: m.op == ipc.Op.LISTEN and m.port == port)
    assert listen.flags == (1 if overlay_bound else 0)
    remote = agent.deliver(port, PEER)
    remote.settimeout(10)  # an app that took the wake connection for a client never answers
    with remote:
        remote.sendall(b"hello overlay")
        assert remote.recv(100) == b"hello overlay"
    assert r.expect("accept") == "OK"
    mapped = family == "inet6"
    peer = f"[::ffff:{PEER[0]}]:{PEER[1]}" if mapped else f"{PEER[0]}:{PEER[1]}"
    local = f"[::ffff:{OWN}]:{port}" if mapped else f"{OWN}:{port}"
    assert r.expect("accept_addr") == peer
    assert r.expect("accept_len") == ("28" if mapped else "16")
    r.expect("sockname")
    assert r.seen["sockname"][-1] == local
    assert r.expect("peername") == peer


@pytest.mark.parametrize("family,bindaddr,mode", [
    ("inet", "-", "accept"),
    ("inet", OWN, "accept4"),
    ("inet", "0.0.0.0", "poll"),
    ("inet6", "-", "epoll"),
    ("inet6", OWN, "accept"),
])
def test_listen_accept_delivers_overlay_connections(probe, lib, agent, background, family,
                                                    bindaddr, mode):
    r = background(probe, env_for(agent, lib), "listen", family, bindaddr, mode, "1")
    if bindaddr != "-":
        assert r.expect("bind") == "OK"
    overlay_bound = bindaddr == OWN
    listener = r.expect("listener")
    if overlay_bound:
        assert OWN in listener  # reported as the overlay address, really bound to 127.0.0.1
    _serve_one(agent, r, family, overlay_bound)
    flags = "1" if mode != "accept" else "0"  # accept4 modes ask SOCK_NONBLOCK|SOCK_CLOEXEC
    assert r.seen["nonblock"] == [flags] and r.seen["cloexec"] == [flags]
    assert r.expect("done") == "1"
    r.finish()
    port = int(r.seen["port"][0])
    ops = agent.ops(pid=r.proc.pid)
    i = ops.index(("RESOLVE", "mark.before-close"))
    assert ops[i:] == [("RESOLVE", "mark.before-close"), ("UNLISTEN", port),
                       ("RESOLVE", "mark.after-close")]
    assert ("ACCEPT", port) in ops


@pytest.mark.parametrize("family", ["inet", "inet6"])
def test_children_sharing_our_memory_leave_the_listener_alone(probe, lib, agent, background, family):
    """posix_spawn, vfork (+ close_range, as CPython's subprocess does) and clone(CLONE_VM)
    children call the interposer in our memory: the listener's entry must survive them, so the
    next accept still turns the agent's wake connection into the overlay connection."""
    r = background(probe, env_for(agent, lib), "listen", family, "-", "accept", "1", "spawn")
    _serve_one(agent, r, family, overlay_bound=False)  # the children ran between listen and accept
    assert r.seen["spawned"] == ["5"]
    assert r.expect("done") == "1"
    r.finish()


def test_local_connections_are_untouched_and_failed_accept_aborts(probe, lib, agent,
                                                                  background):
    r = background(probe, env_for(agent, lib), "listen", "inet", "-", "accept", "3")
    port = int(r.expect("port"))
    agent.wait_for(lambda m: m.op == ipc.Op.LISTEN and m.port == port)
    # 1: a genuine local client.
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"local")
        assert c.recv(100) == b"local"
        assert r.expect("accept") == "OK"
        assert r.expect("peername") == "{}:{}".format(*c.getsockname())
    # 2: a wake connection the agent has nothing for: the app sees ECONNABORTED.
    with agent.wake_without_connection(port):
        assert r.expect("accept") == "ECONNABORTED"
    # 3: and the listener keeps working.
    with agent.deliver(port, PEER) as remote:
        remote.sendall(b"x")
        assert remote.recv(10) == b"x"
    assert r.expect("accept") == "OK"
    assert r.expect("peername") == f"{PEER[0]}:{PEER[1]}"
    r.finish()


def test_loopback_listener_is_not_registered(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "listen", "inet", "127.0.0.1", "accept", "0")
    assert out["done"] == "1"
    assert not [op for op in agent.ops() if op[0] in ("LISTEN", "UNLISTEN")]


def test_dup_close_bookkeeping_unlistens_on_last_close(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "dup")
    assert out["double_close"] == "EBADF"
    ops = [op for op in agent.ops() if op[0] != "HELLO"]
    assert [op[0] if op[0] != "RESOLVE" else op[1] for op in ops] == [
        "LISTEN", "mark.closed-original", "mark.closed-three-dups", "UNLISTEN",
        "mark.dup2-over-last", "LISTEN", "UNLISTEN", "mark.close-range"]
    assert ops[0][1] == ops[3][1] and ops[5][1] == ops[6][1]


# ---- names -------------------------------------------------------------------------------------


def test_getaddrinfo_hints(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "gai", "kv-1")
    a = KV
    assert out["gai.default"] == f"OK inet/stream/6/{a}:0 inet/dgram/17/{a}:0 inet/raw/0/{a}:0"
    assert out["gai.inet_stream_80"] == f"OK inet/stream/6/{a}:80"
    assert out["gai.tcp_proto"] == f"OK inet/stream/6/{a}:7"
    assert out["gai.dgram"] == f"OK inet/dgram/17/{a}:53"
    assert out["gai.named_service"] == f"OK inet/stream/6/{a}:80"
    assert out["gai.bad_service"] == "EAI_SERVICE"
    assert out["gai.numericserv_name"] == "EAI_NONAME"
    assert out["gai.canon"] == f"OK inet/stream/6/{a}:1/canon:kv-1"
    assert out["gai.inet6"] == "EAI_NONAME"
    assert out["gai.inet6_mapped"] == f"OK inet6/stream/6/[::ffff:{a}]:1"
    assert out["gai.bad_socktype"] == "EAI_SOCKTYPE"
    assert out["gai.raw_service"] == "EAI_SERVICE"
    assert out["gai.localhost"] == "OK inet/stream/6/127.0.0.1:1"
    assert ("RESOLVE", "localhost") in agent.ops()  # asked, answered PASS, libc resolved it


def test_getaddrinfo_matches_glibc_for_an_ipv4_only_host(probe, lib, agent):
    """Same hints, our list for kv-1 vs glibc's for a numeric IPv4 address."""
    ours = run(probe, env_for(agent, lib), "gai", "kv-1")
    theirs = run(probe, {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                 "gai", "127.0.0.1")
    differ = {"gai.inet6", "gai.canon"}  # numeric: EAI_ADDRFAMILY / canon = the address
    for key in theirs:
        if key.startswith("gai.") and key not in differ:
            assert ours[key].replace(KV, "127.0.0.1") == theirs[key], key


def test_gethostbyname_family_and_gethostbyaddr(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "hostent", "kv-1", KV)
    want = f"kv-1 inet {KV} len=4 n_aliases=0 second=no"
    assert out["ghbn"] == out["ghbn2_inet"] == out["ghbn_r"] == out["ghbn2_r"] == want
    assert out["ghbn2_inet6"] == "NULL h_errno=4"  # NO_DATA: the name has no IPv6 address
    assert out["ghbn_nx"] == "NULL h_errno=1"  # HOST_NOT_FOUND
    assert out["ghbn_r_rc"] == "0"
    assert out["ghbn_r_tiny"] == "ERANGE result=NULL"
    assert out["ghbn_r_nx"] == "rc=0 result=NULL h_errno=1"
    assert out["ghbn_localhost"].startswith("localhost inet 127.0.0.1")
    assert out["ghba"] == want
    assert out["ghba_nx"] == "NULL h_errno=1"


def test_getnameinfo(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "nameinfo", KV)
    assert out["ni.overlay"] == "OK kv-1 http"
    assert out["ni.overlay_v6"] == "OK kv-1 http"
    assert out["ni.numerichost"] == f"OK {KV} http"
    assert out["ni.overflow"] == "EAI_OVERFLOW - -"
    assert out["ni.unknown"] == "OK 100.64.9.9 http"
    assert out["ni.unknown_namereqd"] == "EAI_NONAME - -"
    assert out["ni.loopback"] == "OK localhost http"
    assert not [op for op in agent.ops() if op[0] == "REVERSE" and op[1] == "127.0.0.1"]


def test_gethostname_and_uname(probe, lib, agent):
    out = run(probe, env_for(agent, lib), "hostname")
    assert out["hostname"] == "kv-3" and out["nodename"] == "kv-3"
    assert out["short"] == "rc=-1 errno=ENAMETOOLONG bytes=kv-"
    assert out["sysname"] == "Linux"


# ---- real binaries -----------------------------------------------------------------------------


def test_real_python_binary(lib, agent, echo_port):
    code = (
        "import socket\n"
        "print(socket.gethostname())\n"
        "print(socket.gethostbyname('kv-1'))\n"
        "print(socket.getaddrinfo('kv-1', 6379, type=socket.SOCK_STREAM)[0][4])\n"
        "s = socket.create_connection(('kv-1', 6379))\n"
        "s.sendall(b'py'); print(s.recv(2).decode(), s.getpeername(), s.getsockname()[0])\n"
        "try:\n"
        "    socket.create_connection(('100.64.0.8', 1))\n"
        "except ConnectionRefusedError as e:\n"
        "    print('refused', e.errno)\n"
    )
    r = subprocess.run(check=False, args=[sys.executable, "-c", code], env=env_for(agent, lib),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["kv-3", KV, f"('{KV}', 6379)",
                                     f"py ('{KV}', 6379) {OWN}", "refused 111"]


def test_python_reverse_lookups_use_the_reentrant_calls(lib, agent):
    # CPython's gethostbyaddr is gethostbyaddr_r underneath: it must see overlay names too.
    code = ("import socket\n"
            f"print(socket.gethostbyaddr('{KV}')[0])\n"
            f"print(socket.getnameinfo(('{KV}', 6379), 0)[0])\n"
            "try:\n"
            "    socket.gethostbyaddr('100.64.9.9')\n"
            "except socket.herror as e:\n"
            "    print('herror', e.errno)\n")
    r = subprocess.run(check=False, args=[sys.executable, "-c", code], env=env_for(agent, lib),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["kv-1", "kv-1", "herror 1"]  # 1: HOST_NOT_FOUND


def local_names_on_this_machine() -> list[str]:
    """The names libc answers from files here (this machine's /etc/hosts and real host name)."""
    from boxer.agent.localnames import HOSTS_FILE, parse_hosts

    return sorted(parse_hosts(Path(HOSTS_FILE).read_text()) | {socket.gethostname()} | {"localhost"})


def test_names_libc_answers_from_files_resolve_exactly_as_without_the_interposer(lib, agent):
    """Issue 12 item 1: localhost, every /etc/hosts name and the machine's name, through
    getaddrinfo (every family), gethostbyname(_ex) and getnameinfo/gethostbyaddr of loopback,
    give what they give plain; the agent's real name table (not a test double's) decides."""
    script = str(ROOT / "tests" / "apps_data" / "local_names.py")
    names = local_names_on_this_machine()
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([sys.executable, script, *names], env=plain_env, capture_output=True,
                           text=True, timeout=60, check=True)
    wrapped = subprocess.run([sys.executable, script, *names, "kv-3", "kv-1"], env=env_for(agent, lib),
                             capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(wrapped.stdout)
    assert {k: got[k] for k in json.loads(plain.stdout)} == json.loads(plain.stdout)
    assert [n for n in names if ("RESOLVE", n) not in agent.ops()] == []  # asked, and told "pass"
    # Our own overlay name resolves to our overlay address, as a host's own name does from its
    # /etc/hosts; another instance's name to its address.
    for name, addr in (("kv-3", OWN), ("kv-1", KV)):
        assert got[name]["byname"] == addr and got[name]["inet"] == [f"AF_INET {addr}"], got[name]
        assert got[name]["inet6_mapped"] == [f"AF_INET6 ::ffff:{addr}"]


def test_real_getent_and_hostname(lib, agent):
    if shutil.which("getent") is None:
        pytest.skip("getent not installed")
    env = env_for(agent, lib)
    r = subprocess.run(check=False, args=["getent", "hosts", "kv-1"], env=env, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and r.stdout.split() == [KV, "kv-1"], r.stderr
    r = subprocess.run(check=False, args=["getent", "ahostsv4", "kv-1"], env=env, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and r.stdout.split()[:3] == [KV, "STREAM", "kv-1"], r.stderr
    r = subprocess.run(check=False, args=["getent", "hosts", "nx-missing"], env=env, capture_output=True,
                       timeout=10)
    assert r.returncode == 2  # "key not found"
    if shutil.which("hostname"):
        r = subprocess.run(check=False, args=["hostname"], env=env, capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "kv-3"


# ---- bad configuration and sanitizers ----------------------------------------------------------


def test_bad_environment_is_reported_not_fatal(probe, lib, agent, echo_port):
    env = env_for(agent, lib, BOXER_PREFIX="100.64.0.0/99", BOXER_LOG="loud",
                  BOXER_WAKE_ADDR="nowhere")
    r = subprocess.run(check=False, args=[str(probe), "connect", "inet", KV, "6379"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and parse(r.stdout)["connect"] == "OK"
    assert "BOXER_LOG='loud' is not one of error|warn|info|debug" in r.stderr
    assert "BOXER_PREFIX='100.64.0.0/99' is not an IPv4 CIDR" in r.stderr
    assert "BOXER_WAKE_ADDR='nowhere' is not an IPv4 address" in r.stderr


def test_under_address_and_undefined_sanitizers(gcc, probe, agent, echo_port, background,
                                                tmp_path):
    so = tmp_path / "libboxer_asan.so"
    build = subprocess.run(check=False, args=
        [gcc, "-shared", "-fPIC", "-g", "-O1", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined", "-fvisibility=hidden", "-std=gnu11", "-pthread",
         "-Wall", "-Wextra", "-Werror", "-o", str(so), *map(str, SOURCES), "-ldl"],
        capture_output=True, text=True)
    libasan = subprocess.run(check=False, args=[gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if build.returncode != 0 or not os.path.isabs(libasan):
        pytest.skip(f"cannot build with -fsanitize=address,undefined: {build.stderr[-500:]}")
    env = env_for(agent, so, LD_PRELOAD=f"{libasan} {so}",
                  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23",
                  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    for args in (["connect", "inet6", KV, "6379", "nonblock"], ["gai", "kv-1"], ["dup"],
                 ["dupconn", "inet", KV, "6379"], ["hostent", "kv-1", KV], ["nameinfo", KV],
                 ["threads", "8", "inet", KV, "6379"]):
        r = subprocess.run(check=False, args=[str(probe), *args], env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, f"{args}: {r.stderr[-3000:]}"
        assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr
    r = background(probe, env, "listen", "inet", OWN, "epoll", "1")
    _serve_one(agent, r, "inet", True)
    r.expect("done")
    r.finish()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_redis_server_and_cli(lib, agent, request, tmp_path):
    """redis-server listens under the interposer and gets an overlay connection through
    accept; redis-cli reaches it by overlay name through connect."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server/redis-cli not installed")
    port = _free_port()
    env = env_for(agent, lib)
    # protected-mode: redis refuses non-loopback peers without a password, and it does see the
    # overlay peer as remote (exactly as on a real network).
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "0.0.0.0", "--save", "",
                             "--protected-mode", "no",
                             "--appendonly", "no", "--dir", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    request.addfinalizer(stop)
    agent.wait_for(lambda m: m.op == ipc.Op.LISTEN and m.port == port and m.pid == proc.pid)
    with agent.deliver(port, PEER) as remote:
        remote.settimeout(10)
        remote.sendall(b"CLIENT INFO\r\n")
        info = remote.recv(4096).decode()
    assert f"addr={PEER[0]}:{PEER[1]}" in info and f"laddr={OWN}:{port}" in info, info
    agent.routes[(KV, 6379)] = port
    r = subprocess.run(check=False, args=[cli, "-h", "kv-1", "-p", "6379", "CLIENT", "INFO"], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    # The server saw a genuine local connection from the agent's TCP socket; the client saw
    # the overlay name resolve and connect.
    assert "addr=127.0.0.1:" in r.stdout, r.stdout
    assert ("CONNECT", KV, 6379) in agent.ops()


# ---- exec: nothing runs outside the overlay by accident (issue 12, item 5) -----------------------


@pytest.fixture(scope="session")
def unwrappable(gcc, tmp_path_factory) -> dict[str, Path]:
    """Programs LD_PRELOAD cannot reach: static, Go (a dynamic binary carrying Go's build id
    section, which is what the check looks for), setuid to another user, and a #! script whose
    interpreter is static; plus a dynamic one that must run."""
    d = tmp_path_factory.mktemp("exec")
    (d / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("ran"); return 0; }\n')
    progs = {"static": d / "static", "dynamic": d / "dynamic", "go": d / "go", "setuid": d / "setuid",
             "script": d / "script"}
    build = subprocess.run([gcc, "-static", "-o", str(progs["static"]), str(d / "hello.c")], capture_output=True)
    if build.returncode != 0:
        pytest.skip("no static libc (libc6-dev) to build a static test binary")
    subprocess.run([gcc, "-o", str(progs["dynamic"]), str(d / "hello.c")], check=True)
    subprocess.run(["objcopy", "--add-section", f".note.go.buildid={d / 'hello.c'}", str(progs["dynamic"]),
                    str(progs["go"])], check=True)
    shutil.copy(progs["dynamic"], progs["setuid"])
    if os.geteuid() == 0:
        os.chown(progs["setuid"], 65534, 65534)  # setuid to nobody: the loader drops LD_PRELOAD
    os.chmod(progs["setuid"], 0o4755)
    progs["script"].write_text(f"#!{progs['static']}\n")
    progs["script"].chmod(0o755)
    return progs


@pytest.mark.parametrize("kind,reason", [("static", "is statically linked"), ("go", "is a Go program"),
                                         ("setuid", "is setuid/setgid"), ("script", "is statically linked")])
def test_a_shell_cannot_exec_what_the_interposer_cannot_reach(lib, agent, unwrappable, kind, reason):
    if kind == "setuid" and os.geteuid() != 0:
        pytest.skip("a setuid binary owned by another user needs root to make")
    prog = unwrappable[kind]
    r = subprocess.run(["sh", "-c", f"{prog}; echo status=$?"], env=env_for(agent, lib), capture_output=True,
                       text=True, timeout=20)
    assert "status=126" in r.stdout and "ran" not in r.stdout  # dash: EACCES -> 126
    assert f"boxer: refusing to run {prog}: " in r.stderr
    assert reason in r.stderr
    assert "Permission denied" in r.stderr


def test_exec_refusal_is_eacces_to_the_caller_and_every_exec_call_checks(lib, agent, unwrappable):
    script = f"""
import errno, os, subprocess, sys
static = {str(unwrappable['static'])!r}
try:
    subprocess.run([static])
except PermissionError as e:
    print("subprocess", errno.errorcode[e.errno])
pid = os.fork()
if pid == 0:
    for call in (lambda: os.execv(static, [static]), lambda: os.execve(static, [static], {{}}),
                 lambda: os.execvp(os.path.basename(static), ["x"])):
        try:
            call()
        except OSError as e:
            print("exec", errno.errorcode[e.errno], flush=True)
    os._exit(0)
os.waitpid(pid, 0)
try:
    os.posix_spawn(static, [static], {{}})
except OSError as e:
    print("posix_spawn", errno.errorcode[e.errno])
"""
    env = env_for(agent, lib, PATH=f"{unwrappable['static'].parent}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20)
    assert r.stdout.split("\n")[:5] == ["subprocess EACCES", "exec EACCES", "exec EACCES", "exec EACCES",
                                        "posix_spawn EACCES"], r.stderr
    assert r.stderr.count("boxer: refusing to run") == 5


def test_boxer_allow_unwrapped_runs_the_named_programs_outside_the_overlay(lib, agent, unwrappable):
    prog = unwrappable["static"]
    env = env_for(agent, lib, BOXER_ALLOW_UNWRAPPED=f"/nowhere/*:{prog.parent}/st*")
    r = subprocess.run(["sh", "-c", str(prog)], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    assert "refusing" not in r.stderr


def test_an_exec_with_a_scrubbed_environment_stays_wrapped(lib, agent, unwrappable):
    """env -i (and daemons that build a fresh envp) would drop LD_PRELOAD and the agent's
    address: the exec'd program gets them back, and a dynamic program runs."""
    r = subprocess.run(["sh", "-c", f"{unwrappable['dynamic']} && env -i /usr/bin/env"], env=env_for(agent, lib),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ran"
    got = dict(line.split("=", 1) for line in lines[1:])
    assert got["LD_PRELOAD"] == str(lib)
    assert got["BOXER_AGENT_SOCK"] == agent.path
    assert got["BOXER_ADDR"] == OWN and got["BOXER_NAME"] == "kv-3"


# ---- exec keeps the overlay state of inherited descriptors (issue 12, item 4) ---------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_overlay_sockets_keep_their_addresses_across_exec(gcc, lib, agent, tmp_path):
    """sshd-style re-exec per connection (the socket on fds 0/1 of the new image) and an
    nginx-style binary upgrade (the listener inherited by a new image) see overlay addresses."""
    prog = tmp_path / "reexec"
    subprocess.run([gcc, "-O1", "-Wall", "-Werror", "-o", str(prog), str(PROGS / "reexec.c")], check=True)
    port = free_port()
    proc = subprocess.Popen([str(prog), str(port), "2"], env=env_for(agent, lib), stderr=subprocess.PIPE, text=True)
    try:
        agent.wait_for(lambda m: m.op == ipc.Op.LISTEN and m.port == port)
        for i in range(4):  # 2 before the upgrade, 2 on the inherited listener after it
            peer = (PEER[0], PEER[1] + i)
            remote = agent.deliver(port, peer)
            remote.settimeout(10)
            with remote:
                line = remote.makefile().readline().strip()
            assert line == f"peer={peer[0]}:{peer[1]} sock={OWN}:{port} exec=serve", (i, line)
        assert ("UNLISTEN", port) not in agent.ops()  # the listener never closed
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()

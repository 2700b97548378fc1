"""The overlay end to end, in the lab: unmodified programs on hosts behind real NATs.

Every program here runs under `boxer run` inside a lab host (a network namespace behind its own
MASQUERADE router that drops unsolicited inbound traffic), so each passing test crossed two real
NATs through a hole-punched TCP connection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import readable_memory, stop_all

APPS = Path(__file__).parent / "apps"
BOXER = [sys.executable, "-m", "boxer"]
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables); run as root to include them",
                allow_module_level=True)
for tool in ("redis-server", "redis-cli", "curl", "iptables", "gcc"):
    if shutil.which(tool) is None:
        pytest.skip(f"lab tests need {tool}: run scripts/install-deps.sh", allow_module_level=True)


def boxer_run(name: str, *argv: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [*BOXER, "run", "--name", name, *extra, "--", *argv]


def app(lab, host: str, name: str, *argv: str, timeout: float = 60, extra: tuple[str, ...] = ()):
    return lab.run(host, boxer_run(name, *argv, extra=extra), capture_output=True, text=True, timeout=timeout)


def client(lab, host: str, name: str, *args: str, timeout: float = 60) -> dict:
    proc = app(lab, host, name, sys.executable, str(APPS / "client.py"), *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def lab():
    from boxer.lab import lab_down, lab_up

    name = f"ov{os.getpid() % 100000}"
    lab = lab_up(name, hosts=3)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(lab.popen("h1", boxer_run("kv", "redis-server", "--port", "6379", "--save", "",
                                               "--appendonly", "no", "--protected-mode", "no"),
                               stdout=subprocess.DEVNULL))
        procs.append(lab.popen("h3", boxer_run("echo", sys.executable, str(APPS / "echo_server.py"), "7777")))
        procs.append(lab.popen("h3", boxer_run("web", sys.executable, "-m", "http.server", "8080"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(APPS)))
        deadline = time.monotonic() + 20
        for target, port in (("kv", "6379"), ("echo", "7777"), ("web", "8080")):
            while client(lab, "h2", "probe", "connect", target, port)["errno"] is not None:
                assert time.monotonic() < deadline, f"{target} did not come up; see {lab.coordinator_log}"
                time.sleep(0.2)
        yield lab
    finally:
        stop_all(procs)
        lab_down(name)


def test_the_nat_is_real_without_boxer(lab):
    h1 = lab.host("h1")
    for target in (h1.address, h1.public_address):
        proc = lab.run("h2", ["timeout", "2", "redis-cli", "-h", target, "-p", "6379", "ping"],
                       capture_output=True, text=True, timeout=20)
        assert "PONG" not in proc.stdout, f"{target} was reachable directly: the lab NAT is not real"
        assert proc.returncode != 0, (proc.stdout, proc.stderr)
    # The private address is not even routed on the "internet" (network unreachable). The public
    # one is, and its NAT drops the unsolicited SYN silently: the connect hangs until `timeout`
    # kills it (exit 124), never refused, exactly as Lambda behaves.
    assert proc.returncode == 124, (proc.returncode, proc.stdout, proc.stderr)
    # and the same command does work where there is a path: h1 to its own redis, locally
    local = lab.run("h1", ["timeout", "2", "redis-cli", "-p", "6379", "ping"], capture_output=True, text=True,
                    timeout=20)
    assert local.stdout.strip() == "PONG"


def test_redis_cli_talks_to_redis_server_across_two_nats(lab):
    assert app(lab, "h2", "cli", "redis-cli", "-h", "kv", "ping").stdout.strip() == "PONG"
    assert app(lab, "h2", "cli", "redis-cli", "-h", "kv", "set", "k", "v1").stdout.strip() == "OK"
    assert app(lab, "h2", "cli", "redis-cli", "-h", "kv", "get", "k").stdout.strip() == "v1"


def test_redis_sees_the_clients_overlay_address(lab):
    out = app(lab, "h2", "cli2", "sh", "-c", "redis-cli -h kv client list; getent hosts cli2").stdout
    client_line, hosts_line = out.strip().splitlines()
    own_addr = hosts_line.split()[0]
    assert own_addr.startswith("100.")
    assert f"addr={own_addr}:" in client_line


def test_getsockname_getpeername_and_hostname_are_overlay_values(lab):
    seen = client(lab, "h2", "peerclient", "peer", "echo", "7777")
    assert seen["client_peer"][0] == seen["server_own"][0]
    assert seen["client_peer"][1] == "7777" == seen["server_own"][1]
    assert seen["server_sees_peer"] == seen["client_sock"]
    assert seen["server_sees_peer"][0].startswith("100.")
    assert seen["client_hostname"] == "peerclient"
    assert seen["server_hostname"] == "echo"


def test_curl_against_python_http_server(lab):
    proc = app(lab, "h2", "curler", "curl", "-sS", "--max-time", "10", "http://web:8080/client.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (APPS / "client.py").read_text()


def test_64_concurrent_connections_from_many_threads(lab):
    result = client(lab, "h2", "threads", "concurrent", "echo", "7777", "64", timeout=120)
    assert result == {"ok": 64, "errors": []}


def test_bulk_transfer_of_16_mb_right_after_the_punch_is_byte_exact(lab):
    result = client(lab, "h2", "bulk", "bulk", "echo", "7777", str(16 * 1024 * 1024), timeout=120)
    assert result["match"] is True


def test_unknown_name_is_eai_noname(lab):
    assert client(lab, "h2", "resolver", "resolve", "no-such-host") == {"error": "EAI_NONAME"}
    assert client(lab, "h2", "resolver", "resolve", "kv")["addresses"][0].startswith("100.")


def test_nothing_listening_is_econnrefused_within_100_ms(lab):
    result = client(lab, "h2", "refused", "connect", "kv", "6390")
    assert result["errno"] == "ECONNREFUSED"
    assert result["seconds"] < 0.1


def test_no_such_instance_is_ehostunreach(lab):
    result = client(lab, "h2", "unreach", "connect", "100.127.255.1", "80")
    assert result["errno"] == "EHOSTUNREACH"


def _iptables(netns: str, *rule: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "iptables", *rule], check=True)


def test_blocked_direct_path_falls_back_to_the_relay_byte_exact(lab):
    # h2's router drops everything from h3's router (where echo runs): no punch can succeed, as
    # behind a NAT that filters what we cannot punch. The relay on the coordinator's host carries it.
    r2 = lab.host("h2").router_netns
    rule = ["FORWARD", "-s", lab.host("h3").public_address, "-j", "DROP"]
    before = lab.coordinator_log.read_text().count("relay: joined")
    _iptables(r2, "-I", *rule)
    try:
        result = client(lab, "h2", "relayed", "bulk", "echo", "7777", str(10 * 1024 * 1024))
        assert result["match"] is True
    finally:
        _iptables(r2, "-D", *rule)
    assert lab.coordinator_log.read_text().count("relay: joined") > before


def test_the_relay_is_raced_a_quarter_second_after_a_punch_that_cannot_succeed(lab):
    # Happy eyeballs: the relay starts 0.25 s after the punch (Timeouts.relay_delay), not once the
    # punch has failed for 1.5 s as before, so the app's connect is through well within a second.
    r2 = lab.host("h2").router_netns
    rule = ["FORWARD", "-s", lab.host("h3").public_address, "-j", "DROP"]
    _iptables(r2, "-I", *rule)
    try:
        result = client(lab, "h2", "raced", "connect", "echo", "7777")
    finally:
        _iptables(r2, "-D", *rule)
    assert result["errno"] is None
    assert 0.25 <= result["seconds"] < 1.0


def test_failed_punch_and_unreachable_relay_is_etimedout(lab):
    r2 = lab.host("h2").router_netns
    direct = ["FORWARD", "-s", lab.host("h1").public_address, "-j", "DROP"]
    relay = ["FORWARD", "-p", "tcp", "--dport", str(int(lab.coordinator.rpartition(":")[2]) + 1), "-j", "DROP"]
    _iptables(r2, "-I", *direct)
    _iptables(r2, "-I", *relay)
    try:
        proc = app(lab, "h2", "blocked", sys.executable, str(APPS / "client.py"), "connect", "kv", "6379",
                   extra=("--connect-timeout", "2.5"))
        result = json.loads(proc.stdout)
        assert result["errno"] == "ETIMEDOUT"
        assert 1.5 < result["seconds"] < 4.0
    finally:
        _iptables(r2, "-D", *direct)
        _iptables(r2, "-D", *relay)


def test_daemonizing_redis_stays_in_the_overlay_and_is_stopped_with_its_agent(lab, tmp_path):
    pidfile = tmp_path / "redis.pid"
    agent = lab.popen("h1", boxer_run("kvd", "redis-server", "--port", "6380", "--daemonize", "yes", "--save", "",
                                      "--protected-mode", "no", "--pidfile", str(pidfile)),
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while app(lab, "h2", "dcli", "redis-cli", "-h", "kvd", "-p", "6380", "ping").stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "the daemonized redis never answered"
            time.sleep(0.3)
        daemon = int(pidfile.read_text())
        assert agent.poll() is None  # the agent outlives the daemon's short-lived parent
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{daemon}") and "Z" not in Path(f"/proc/{daemon}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the daemon outlived its agent"
        time.sleep(0.1)


def test_exit_status_is_the_applications(lab):
    assert app(lab, "h2", "exiter", "sh", "-c", "exit 7").returncode == 7


def test_the_app_holds_its_stdio_and_what_it_was_given_nothing_of_the_agents(lab):
    """Descriptors the agent itself opened (its event loop's, copies of its stdio) must not
    leak into the app; a descriptor handed to `boxer run` (socket activation, `3<file`) must."""
    listing = ("import json, os; print(json.dumps(sorted("
               "(int(f), os.readlink('/proc/self/fd/' + f)) for f in os.listdir('/proc/self/fd') "
               "if os.path.exists('/proc/self/fd/' + f))))")
    given = lab.run("h2", ["bash", "-c", 'exec 7</etc/hostname; exec "$@"', "-",
                           *boxer_run("fds", sys.executable, "-c", listing)],
                    capture_output=True, text=True, timeout=60)
    assert given.returncode == 0, given.stderr
    fds = dict(json.loads(given.stdout.splitlines()[-1]))  # the listing's own fd is closed by then
    assert {fd: target for fd, target in fds.items() if fd > 2} == {7: "/etc/hostname"}, fds


def test_wrong_secret_is_refused_and_the_app_never_starts(lab, tmp_path):
    secret = tmp_path / "wrong"
    secret.write_text("00" * 32)
    marker = tmp_path / "started"
    proc = lab.run("h2", boxer_run("wrong", "touch", str(marker), extra=("--secret-file", str(secret))),
                   capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "authentication failed: wrong" in proc.stderr  # the secret, or the instance's credential
    assert not marker.exists()


# --- an instance holds its token, never the deployment secret (issue 14) --------------------------

def token_env(lab, instance: str, token_for: str | None = None) -> dict[str, str]:
    """What a controller gives an instance: the coordinator, its id and its token; no secret."""
    from boxer.nat_traversal.auth import instance_token, load_secret

    token = instance_token(load_secret(str(lab.secret_file)), token_for or instance)
    return {"PATH": os.environ["PATH"], "BOXER_COORDINATOR": lab.coordinator, "BOXER_INSTANCE_ID": instance,
            "BOXER_INSTANCE_TOKEN": token.hex()}


def token_run(lab, host: str, env: dict[str, str], name: str, *argv: str, **kwargs):
    """`boxer run` in `host` without the lab's BOXER_SECRET_FILE (lab.run would add it)."""
    return subprocess.run(lab.command(host, boxer_run(name, *argv)), env=env, capture_output=True, text=True,
                          timeout=60, **kwargs)


@pytest.fixture
def token_server(lab):
    """An echo server whose agent was given only its instance's token."""
    env = token_env(lab, "70ce0001")
    proc = subprocess.Popen(lab.command("h1", boxer_run("techo", sys.executable, str(APPS / "echo_server.py"),
                                                        "7778")),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while client(lab, "h2", "tprobe", "connect", "techo", "7778")["errno"] is not None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the token-only server did not come up"
            time.sleep(0.2)
        yield proc
    finally:
        stop_all([proc])


def test_an_instance_with_only_its_token_registers_and_connects_directly_and_through_the_relay(lab, token_server):
    env = token_env(lab, "70ce0002")
    direct = token_run(lab, "h2", env, "tcli", sys.executable, str(APPS / "client.py"), "bulk", "techo", "7778",
                       str(1024 * 1024))
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["match"] is True
    # No punch between h2 and h1 (h2's router drops h1's router): the relay carries it, its proofs
    # keyed by the connection's key (the relay derives it; neither agent holds the secret).
    r2 = lab.host("h2").router_netns
    rule = ["FORWARD", "-s", lab.host("h1").public_address, "-j", "DROP"]
    before = lab.coordinator_log.read_text().count("relay: joined")
    _iptables(r2, "-I", *rule)
    try:
        relayed = token_run(lab, "h2", env, "tcli", sys.executable, str(APPS / "client.py"), "bulk", "techo",
                            "7778", str(1024 * 1024))
    finally:
        _iptables(r2, "-D", *rule)
    assert relayed.returncode == 0, relayed.stderr
    assert json.loads(relayed.stdout)["match"] is True
    assert lab.coordinator_log.read_text().count("relay: joined") > before


def test_a_token_for_one_instance_cannot_register_another(lab, tmp_path):
    marker = tmp_path / "started"
    proc = token_run(lab, "h2", token_env(lab, "70ce00bb", token_for="70ce00aa"), "thief", "touch", str(marker))
    assert proc.returncode == 2
    assert "authentication failed: wrong credential for instance 70ce00bb" in proc.stderr
    assert not marker.exists()
    # and a token needs the id it was issued for
    alone = {k: v for k, v in token_env(lab, "70ce00aa").items() if k != "BOXER_INSTANCE_ID"}
    proc = token_run(lab, "h2", alone, "thief", "touch", str(marker))
    assert proc.returncode == 2 and "an instance token is bound to one instance id" in proc.stderr


def test_the_agent_holds_no_deployment_secret(lab, token_server):
    """Not in its environment, not in a file it holds open, not in its memory: what an app that
    reads /proc of its agent (same user) could find there is its own instance's token at most."""
    from boxer.nat_traversal.auth import load_secret

    secret = load_secret(str(lab.secret_file))
    agent = token_server.pid  # `ip netns exec` execs: the agent's own pid
    environ = Path(f"/proc/{agent}/environ").read_bytes()
    assert b"BOXER_SECRET" not in environ and secret.hex().encode() not in environ
    assert b"BOXER_INSTANCE_TOKEN=" in environ  # what it was given instead
    for fd in os.listdir(f"/proc/{agent}/fd"):
        target = os.readlink(f"/proc/{agent}/fd/{fd}")
        assert target != str(lab.secret_file)
        if target.startswith("/") and os.path.isfile(target) and os.path.getsize(target) < 1 << 20:
            assert secret.hex().encode() not in Path(target).read_bytes(), target
    memory = readable_memory(agent)
    assert len(memory) > 1 << 20  # (we did read it)
    held = {what: what in memory for what in (secret, secret.hex().encode(), str(lab.secret_file).encode())}
    assert not any(held.values()), held


def test_unreachable_coordinator_is_a_clear_error_and_the_app_never_starts(lab, tmp_path):
    marker = tmp_path / "started"
    proc = lab.run("h2", boxer_run("lost", "touch", str(marker), extra=("--coordinator", "198.18.0.1:7999")),
                   capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "cannot reach the coordinator at 198.18.0.1:7999" in proc.stderr
    assert not marker.exists()


def test_static_and_setuid_binaries_are_refused_with_the_reason(lab, tmp_path):
    source = tmp_path / "hello.c"
    source.write_text("int main(void) { return 0; }\n")
    static = tmp_path / "hello-static"
    build = subprocess.run(["gcc", "-static", "-o", str(static), str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"no static libc to build a static test binary: {build.stderr.strip()[:200]}")
    proc = app(lab, "h2", "static", str(static))
    assert proc.returncode == 126
    assert "statically linked" in proc.stderr

    setuid = tmp_path / "true-setuid"
    shutil.copy("/bin/true", setuid)
    os.chmod(setuid, 0o4755)
    proc = app(lab, "h2", "setuid", str(setuid))
    assert proc.returncode == 126
    assert "setuid" in proc.stderr

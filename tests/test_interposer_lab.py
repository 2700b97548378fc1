"""The interposer with real programs in the lab (issue 12): children that share the app's
memory, privilege drops, re-exec with inherited overlay sockets, and exec of programs it cannot
wrap. Every program runs under `boxer run` on a host behind its own NAT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import boxer_run, stop_all, wait_for

APPS = Path(__file__).parent / "apps"
PROGS = Path(__file__).parent / "interposer_progs"
pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    print("skipping: lab tests need root (network namespaces, iptables)")
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)
for _tool in ("iptables", "gcc"):
    if shutil.which(_tool) is None:
        print(f"skipping: these lab tests need {_tool} (scripts/install-deps.sh)")
        pytest.skip(f"these lab tests need {_tool}", allow_module_level=True)

# Connects, reads one line, prints {"sock": [ip, port], "line": "..."}.
CLIENT = """
import json, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), 10) as s:
    s.settimeout(10)
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(json.dumps({"sock": list(s.getsockname()[:2]), "line": data.decode().strip()}))
"""


@pytest.fixture(scope="module")
def lab():
    from boxer.lab import lab_down, lab_up

    name = f"ip{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    try:
        yield lab
    finally:
        stop_all(_started)
        lab_down(name)


_started: list[subprocess.Popen] = []


def start(lab, host: str, name: str, *argv: str, **kw) -> subprocess.Popen:
    """A server under `boxer run`, stopped when the module's lab goes."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    proc = lab.popen(host, boxer_run(name, *argv), **kw)
    _started.append(proc)
    return proc


def ask(lab, host: str, target: str, port: int, timeout: float = 30) -> dict:
    """One overlay connection from a client under `boxer run` on host; retried until the server
    is up (it starts on its own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = lab.run(host, boxer_run("client", sys.executable, "-c", CLIENT, target, str(port)),
                       capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        assert time.monotonic() < deadline, f"{target}:{port} never answered: {proc.stderr[-2000:]}"
        time.sleep(0.3)


# ---- item 2: children that share the app's memory ---------------------------------------------


def test_python_server_running_a_subprocess_before_accept_keeps_its_listener(lab):
    """CPython's subprocess spawns with vfork and close_range in the child: before the fix the
    child emptied the parent's fd table and the next accept() returned the agent's raw wake
    connection (peer 127.0.0.2) to the app, and the client read EOF."""
    start(lab, "h1", "spawner", sys.executable, str(APPS / "spawning_server.py"), "7001")
    for _ in range(3):  # every accept follows a subprocess
        seen = ask(lab, "h2", "spawner", 7001)
        peer_ip, peer_port, status = seen["line"].split()
        assert [peer_ip, int(peer_port)] == seen["sock"]  # the client's overlay address
        assert peer_ip.startswith("100.")
        assert status == "0"


# ---- item 5: a wrapped program cannot exec one the interposer cannot reach ----------------------


def test_sh_c_of_a_static_program_is_refused_as_boxer_run_refuses_it(lab, tmp_path):
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("ran unwrapped"); return 0; }\n')
    static = tmp_path / "static-prog"
    build = subprocess.run(["gcc", "-static", "-o", str(static), str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"no static libc to build a static test binary: {build.stderr.strip()[:200]}")
    direct = lab.run("h2", boxer_run("static", str(static)), capture_output=True, text=True, timeout=60)
    nested = lab.run("h2", boxer_run("static", "sh", "-c", f"{static}; echo status=$?"), capture_output=True,
                     text=True, timeout=60)
    assert direct.returncode == 126
    reason = direct.stderr.strip().splitlines()[-1].split(": ", 2)[2]  # "boxer: refusing to run X: <reason>"
    assert "statically linked" in reason
    assert "ran unwrapped" not in nested.stdout
    assert "status=126" in nested.stdout  # sh got EACCES, as from a file it may not execute
    assert f"boxer: refusing to run {static}: {reason}" in nested.stderr
    allowed = lab.run("h2", boxer_run("static", "sh", "-c", str(static)), capture_output=True, text=True,
                      timeout=60, env={**os.environ, "BOXER_ALLOW_UNWRAPPED": str(static)})
    assert allowed.returncode == 0 and allowed.stdout == "ran unwrapped\n", allowed.stderr


# ---- item 4: overlay sockets inherited across execve ------------------------------------------


@pytest.fixture(scope="module")
def reexec(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reexec") / "reexec"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(PROGS / "reexec.c")], check=True)
    return out


def test_a_server_that_re_execs_per_connection_and_upgrades_its_binary_sees_overlay_addresses(lab, reexec):
    """sshd-style: each connection served by a re-exec'd child holding the socket on fds 0/1;
    after two, the server execs a new image that inherits the listener (nginx's binary upgrade).
    Before the fix the re-exec'd child saw the NAT's address and the punched port."""
    start(lab, "h1", "reexec", str(reexec), "7002", "2")
    for i in range(4):
        seen = ask(lab, "h2", "reexec", 7002)
        fields = dict(kv.split("=", 1) for kv in seen["line"].split())
        assert fields["exec"] == "serve", seen
        assert fields["peer"] == "{}:{}".format(*seen["sock"]), (i, seen)  # the client's overlay address
        assert fields["sock"].startswith("100.") and fields["sock"].endswith(":7002"), (i, seen)


SSHD_CONFIG = """\
Port 2222
ListenAddress 0.0.0.0
HostKey {d}/hostkey
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel VERBOSE
"""


def test_sshd_re_exec_per_connection_sees_the_clients_overlay_address(lab, tmp_path):
    """OpenSSH's sshd re-execs itself for every connection with the socket inherited; the session
    it starts gets a fresh environment. SSH_CONNECTION and sshd's log must show overlay addresses
    (before the fix: the client's NAT address and punched port)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh") is None:
        pytest.skip("openssh-server / openssh-client not installed (scripts/install-deps.sh)")
    for name in ("hostkey", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    shutil.copy(tmp_path / "client.pub", tmp_path / "authorized_keys")
    (tmp_path / "sshd_config").write_text(SSHD_CONFIG.format(d=tmp_path))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = tmp_path / "sshd.log"
    with open(log, "w") as err:
        start(lab, "h1", "sshd", sshd, "-D", "-e", "-f", str(tmp_path / "sshd_config"), stderr=err)
    script = ("import json, socket, subprocess, sys\n"
              "own = socket.gethostbyname(socket.gethostname())\n"
              "out = subprocess.run(['ssh', '-p', '2222', '-i', sys.argv[1], '-o', 'BatchMode=yes',\n"
              "    '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', 'root@sshd',\n"
              "    'echo $SSH_CONNECTION'], capture_output=True, text=True, timeout=30)\n"
              "print(json.dumps({'own': own, 'rc': out.returncode, 'out': out.stdout, 'err': out.stderr}))\n")
    deadline = time.monotonic() + 30
    while True:
        proc = lab.run("h2", boxer_run("sshclient", sys.executable, "-c", script, str(tmp_path / "client")),
                       capture_output=True, text=True, timeout=90)
        seen = json.loads(proc.stdout) if proc.returncode == 0 else {"rc": -1, "err": proc.stderr}
        if seen["rc"] == 0:
            break
        assert time.monotonic() < deadline, f"ssh never logged in: {seen['err'][-1500:]}\n{log.read_text()[-1500:]}"
        time.sleep(0.5)
    client_ip, client_port, server_ip, server_port = seen["out"].split()
    assert client_ip == seen["own"] and client_ip.startswith("100."), seen
    assert server_ip.startswith("100.") and server_port == "2222", seen
    assert f"Connection from {client_ip} port {client_port}" in log.read_text()


# ---- item 3: descendants that change user keep the overlay; other local users are refused ----------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def postgres_dir():
    """A folder owned by the postgres user (pytest's tmp is 0700 root: postgres cannot enter it)."""
    import pwd
    import tempfile

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (scripts/install-deps.sh installs postgresql)")
    if not (PG_BIN / "postgres").exists():
        pytest.skip(f"no {PG_BIN}/postgres (scripts/install-deps.sh installs postgresql 15)")
    d = Path(tempfile.mkdtemp(prefix="boxer-pg-"))
    os.chown(d, user.pw_uid, user.pw_gid)
    yield d, user.pw_uid
    shutil.rmtree(d, ignore_errors=True)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_postgres_dropping_to_its_user_by_runuser_keeps_the_overlay(lab, postgres_dir):
    """`boxer run -- runuser -u postgres -- postgres ...`, the way a container entrypoint starts
    it: postgres (uid postgres, a grandchild of the agent) listens on the overlay and psql on
    another NATed host reaches it by name. Before the fix postgres logged `HELLO: cannot reach
    the agent at /tmp/boxer-agent-.../agent.sock: Permission denied`, then `could not listen`."""
    d, pg_uid = postgres_dir
    data = d / "data"
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True, timeout=120)
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 0.0.0.0/0 trust\n")  # psql comes from another host's overlay address
    log = d / "postgres.log"
    with open(log, "w") as err:
        server = start(lab, "h1", "pg", "runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
                       "-c", "listen_addresses=*", "-c", "port=5432", "-k", str(d), stderr=err)
    query = ("getent hosts pgclient | cut -d' ' -f1; "
             f"{PG_BIN / 'psql'} -h pg -U postgres -At -F ' ' "
             "-c 'select inet_client_addr(), inet_server_addr(), inet_server_port()'")
    try:
        deadline = time.monotonic() + 40
        while True:
            proc = lab.run("h2", boxer_run("pgclient", "sh", "-c", query), capture_output=True, text=True,
                           timeout=60)
            lines = proc.stdout.split()
            if proc.returncode == 0 and len(lines) == 4:
                break
            assert server.poll() is None, f"postgres exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"psql never connected: {proc.stderr[-1500:]}\n{log.read_text()[-1500:]}"
            time.sleep(0.5)
        own, client, server_addr, port = lines
        assert client == own and client.startswith("100."), lines  # the backend sees psql's overlay address
        assert server_addr.startswith("100.") and port == "5432", lines
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        assert _uid_of(postmaster) == pg_uid  # it did drop to postgres
        assert "cannot reach the agent" not in log.read_text()
    finally:
        server.terminate()
        server.wait(30)


def _app_env(path: Path) -> dict[str, str]:
    env = {}
    for entry in path.read_bytes().split(b"\0"):
        key, sep, value = entry.decode().partition("=")
        if sep:
            env[key] = value
    return env


def test_only_the_apps_own_tree_may_talk_to_the_agent_whatever_the_user(lab, tmp_path):
    """The agent's socket is open to every uid (0666) so that descendants that drop privileges
    keep the overlay; the agent itself refuses anyone outside the app's tree. Inside: a child that
    drops uid, gid and groups (setpriv) resolves the instance's own name through the agent.
    Outside: a process as nobody (runuser) and one as root, each given the app's whole environment
    (LD_PRELOAD, BOXER_AGENT_SOCK...), get no answer, and the agent logs each refusal."""
    env_file, inside = tmp_path / "environ", tmp_path / "inside"
    script = (f"cat /proc/$$/environ > {env_file}; "
              f"setpriv --reuid=nobody --regid=nogroup --clear-groups -- getent hosts keeper > {inside}.tmp; "
              f"mv {inside}.tmp {inside}; exec sleep 120")
    log = tmp_path / "agent.log"
    with open(log, "w") as err:
        keeper = start(lab, "h1", "keeper", "sh", "-c", script, stderr=err)
    deadline = time.monotonic() + 30
    while not inside.exists():
        assert keeper.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    own = inside.read_text().split()
    assert len(own) == 2 and own[0].startswith("100.") and own[1] == "keeper", (own, log.read_text()[-1500:])
    env = _app_env(env_file)
    assert env["BOXER_AGENT_SOCK"].startswith("/tmp/boxer-agent-")
    sock = Path(env["BOXER_AGENT_SOCK"])
    assert (sock.stat().st_mode & 0o777, sock.parent.stat().st_mode & 0o777) == (0o666, 0o711)
    # `env K=V... getent`: only getent gets the app's LD_PRELOAD and BOXER_* (not ip or runuser).
    ask = ["env", *(f"{k}={v}" for k, v in env.items()), "getent", "hosts", "keeper"]
    outsiders = {0: ask, 65534: ["runuser", "-u", "nobody", "--", *ask]}
    for uid, argv in outsiders.items():
        proc = lab.run("h1", argv, capture_output=True, text=True, timeout=30)
        assert proc.stdout == "" and proc.returncode != 0, (uid, proc.stdout, proc.stderr)
        # The first refusal of a uid is logged at once (then one line per 10 s with the count).
        line = f"refused (ipc-peer uid {uid}): a connection to the agent's socket from pid "
        wait_for(f"the refusal of uid {uid} in the agent's log", lambda line=line: line in log.read_text(), timeout=5)
        refusal = next(x for x in log.read_text().splitlines() if line in x)
        assert refusal.endswith("'getent': not the app or one of its descendants; closed unanswered"), refusal

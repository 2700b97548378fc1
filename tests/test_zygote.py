"""The lab's agent zygote: an instance forked from it is indistinguishable from one started with
`ip netns exec python -m boxer run`, for the agent, for the application, and for whoever stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from boxer._python import module_argv
from boxer.backends.zygote import IMPORT_TIME_ENV, TITLE_ROOM, incompatibility

# The app reports what it sees, then serves until stopped.
FACTS = r"""
import json, os, resource, sys, time
facts = {
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "exe": os.path.realpath("/proc/self/exe"),
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "mntns_differs": os.stat("/proc/self/ns/mnt").st_ino != os.stat("/proc/1/ns/mnt").st_ino
        if os.access("/proc/1/ns/mnt", os.R_OK) else None,
    "sys_class_net": sorted(os.listdir("/sys/class/net")),
    "cgroup": open("/proc/self/cgroup").read(),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
    "ppid": os.getppid(),
    "sid_is_agent": os.getsid(0) == os.getppid(),
    "pgid_is_agent": os.getpgid(0) == os.getppid(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "stdin": os.readlink("/proc/self/fd/0"),
}
with open(sys.argv[1], "w") as f:
    json.dump(facts, f)
if len(sys.argv) > 2:
    sys.exit(int(sys.argv[2]))
while True:
    time.sleep(1)
"""


def test_only_what_the_agent_reads_at_import_keeps_an_instance_from_being_forked():
    base = {"PATH": "/bin", "PYTHONUNBUFFERED": "1", "HOME": "/root"}
    assert incompatibility(base, {**base, "BOXER_INSTANCE_ID": "ab" * 8, "FOO": "x"}) is None
    # The agent's settings are read when it runs, in the forked child with its own environment.
    assert incompatibility(base, {**base, "BOXER_NAT_IDLE_TIMEOUT": "3", "BOXER_WARM_SPARES": "0"}) is None
    assert "PYTHONUNBUFFERED" in incompatibility(base, {k: v for k, v in base.items() if k != "PYTHONUNBUFFERED"})
    assert "PYTHONPATH" in incompatibility(base, {**base, "PYTHONPATH": "/x"})
    assert "LC_ALL" in incompatibility(base, {**base, "LC_ALL": "C"})
    assert IMPORT_TIME_ENV == ()


def test_every_variable_the_agent_reads_at_import_is_listed():
    """A module-level os.environ read in the code the zygote imports must be in IMPORT_TIME_ENV."""
    import re

    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in [*root.glob("boxer/agent/*.py"), *root.glob("nat_traversal/*.py"), root / "boxer/cli/run.py", root / "boxer/cli/_common.py",
                 root / "boxer/cli/__init__.py", root / "boxer/agent/ipc.py"]:
        for line in path.read_text().splitlines():
            if line[:1].strip() and "os.environ" in line:  # not indented: runs at import
                found.update(re.findall(r"""os\.environ(?:\.get)?[\[(]\s*["']([A-Z0-9_]+)""", line))
    assert found <= set(IMPORT_TIME_ENV), found - set(IMPORT_TIME_ENV)


needs_lab = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (network namespaces)")


@pytest.mark.lab
@needs_lab
def test_a_forked_instance_is_indistinguishable_from_one_started_with_ip_netns_exec(tmp_path):
    from boxer.backends.base import InstanceSpec, Placement
    from boxer.backends.local import LocalBackend
    from boxer.lab import lab_down, lab_up

    name = f"zy{os.getpid() % 100000}"
    lab = lab_up(name, hosts=3)
    (tmp_path / "logs").mkdir()
    work = tmp_path / "work"
    work.mkdir()

    def spec(index: int, out: Path, *extra: str) -> InstanceSpec:
        return InstanceSpec(name=f"app-{index}", service="app", index=index,
                            command=(sys.executable, "-c", FACTS, str(out), *extra),
                            env={"BOXER_INSTANCE_ID": f"{index:016x}", "APP_SETTING": "same"},
                            placement=Placement.FUNCTION)

    async def scenario() -> dict:
        forked = LocalBackend(lab, log_dir=tmp_path / "logs", cwd=work, zygote=True)
        plain = LocalBackend(lab, log_dir=tmp_path / "logs", cwd=work, zygote=False)
        plain.pools = {p: ["h2"] for p in plain.pools}  # one host each, so they never collide
        forked.pools = {p: ["h1", "h3"] for p in forked.pools}
        try:
            a = await forked.launch(spec(1, tmp_path / "a.json"))
            b = await plain.launch(spec(2, tmp_path / "b.json"))
            assert a.details.get("zygote") and not b.details.get("zygote")
            deadline = time.monotonic() + 30
            while not ((tmp_path / "a.json").exists() and (tmp_path / "b.json").exists()):
                assert time.monotonic() < deadline, (tmp_path / "logs").glob("*")
                assert not a.ended and not b.ended, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("*")]
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the facts file is complete once written and closed
            facts_a = json.loads((tmp_path / "a.json").read_text())
            facts_b = json.loads((tmp_path / "b.json").read_text())
            agent_a = a.details["pid"]
            cmdlines = [Path(f"/proc/{h.details['pid']}/cmdline").read_bytes().rstrip(b"\0") for h in (a, b)]
            argvs = [b"\0".join(os.fsencode(x) for x in backend.argv(h.spec))
                     for backend, h in ((forked, a), (plain, b))]
            app_a = facts_a["ppid"] == agent_a and Path(f"/proc/{agent_a}/task/{agent_a}/children").read_text().split()
            # Stopping through the backend ends the agent and the app.
            await forked.stop(a)
            await plain.stop(b)
            assert a.ended and b.ended
            gone = [pid for pid in (agent_a, *map(int, app_a or [])) if Path(f"/proc/{pid}").exists()
                    and b"boxer" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            # An app that fails: its status is the instance's, as with ip netns exec.
            c = await forked.launch(spec(3, tmp_path / "c.json", "3"))
            for _ in range(300):
                if c.ended:
                    break
                await asyncio.sleep(0.05)
            return {"a": facts_a, "b": facts_b, "agent_a": agent_a, "left": gone,
                    "cmdlines": cmdlines, "argvs": argvs,
                    "c": (c.ended, c.details.get("exit_status"), c.state.value)}
        finally:
            await forked.close()
            await plain.close()

    try:
        result = asyncio.run(scenario())
    finally:
        lab_down(name)
    a, b = result["a"], result["b"]
    per_instance = {"BOXER_INSTANCE_ID", "BOXER_LAB_HOST", "BOXER_NAME", "BOXER_ADDR", "BOXER_AGENT_SOCK",
                    "BOXER_RESOLV_CONF", "BOXER_INSTANCE_NAME", "BOXER_INSTANCE_INDEX"}
    same_env = {k: v for k, v in a["env"].items() if k not in per_instance}
    assert same_env == {k: v for k, v in b["env"].items() if k not in per_instance}
    assert a["env"]["APP_SETTING"] == "same" and "libboxer_preload" in a["env"]["LD_PRELOAD"]
    assert a["env"]["BOXER_LAB_HOST"] == "h1"
    for key in ("cwd", "exe", "cgroup", "nofile", "nproc", "sid_is_agent", "pgid_is_agent", "stdin",
                "sys_class_net", "mntns_differs"):
        assert a[key] == b[key], key
    assert a["cwd"] == str(tmp_path / "work")
    assert a["exe"] == os.path.realpath(sys.executable)  # the app is exec'd fresh
    assert a["sys_class_net"] == ["bx-lan", "lo"]  # the host's /sys, as ip netns exec gives
    assert a["netns"] != b["netns"]  # h1 and h2
    assert a["fds"] == b["fds"], "the forked agent leaked descriptors into the app"
    assert result["left"] == []
    assert result["c"] == (True, 3, "failed")
    # ps shows `python -P -m boxer run ...` either way (forked: cut after at least TITLE_ROOM bytes).
    (cmd_a, cmd_b), (argv_a, argv_b) = result["cmdlines"], result["argvs"]
    assert cmd_b == argv_b
    assert argv_a.startswith(cmd_a) and len(cmd_a) >= min(len(argv_a), TITLE_ROOM)
    head = [os.fsencode(x) for x in module_argv("boxer", "run", "--name")]
    assert cmd_a.split(b"\0")[:len(head)] == head


@pytest.mark.lab
@needs_lab
def test_an_instance_whose_environment_changes_import_time_settings_is_not_forked(tmp_path):
    """PYTHON* is read by the interpreter at start: such an instance is started the old way. The
    agent's own settings are read when it runs (not at import): a forked instance has its own."""
    from boxer.backends.base import InstanceSpec, Placement
    from boxer.backends.local import LocalBackend
    from boxer.lab import lab_down, lab_up

    name = f"zz{os.getpid() % 100000}"
    lab = lab_up(name, hosts=1)
    seen = tmp_path / "seen"
    tell = (f"import os, time; open({str(seen)!r}, 'w').write(os.environ.get('BOXER_NAT_IDLE_TIMEOUT', '-')); "
            "time.sleep(60)")

    async def launch(backend, env, command):
        handle = await backend.launch(InstanceSpec(
            name="app-1", service="app", index=1, command=(sys.executable, "-c", command),
            env=env, placement=Placement.FUNCTION))
        forked, pid = bool(handle.details.get("zygote")), handle.details["pid"]
        if command == tell:
            deadline = time.monotonic() + 20
            while not seen.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await backend.stop(handle)
        return forked, pid

    async def scenario():
        backend = LocalBackend(lab, log_dir=tmp_path, zygote=True)
        try:
            interpreter = await launch(backend, {"PYTHONPATH": str(tmp_path)}, "import time; time.sleep(60)")
            agent = await launch(backend, {"BOXER_NAT_IDLE_TIMEOUT": "3"}, tell)
            return interpreter, agent
        finally:
            await backend.close()

    try:
        (forked, pid), (agent_forked, _) = asyncio.run(scenario())
    finally:
        lab_down(name)
    assert not forked
    assert not Path(f"/proc/{pid}").exists() or b"boxer" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert agent_forked and seen.read_text() == "3"


@pytest.mark.lab
@needs_lab
def test_a_zygote_started_before_the_lab_is_adopted_by_the_backend(tmp_path):
    """`boxer up` starts the zygote before it builds the lab and the controller adopts it from
    the pipes it inherits: instances are forked from that one, and it ends with the backend."""
    from boxer.backends.base import InstanceSpec, Placement
    from boxer.backends.local import LocalBackend
    from boxer.backends.zygote import start_for_adoption
    from boxer.lab import lab_down, lab_up

    zygote = start_for_adoption(sys.executable, os.environ, str(tmp_path / "zygote.log"))
    name = f"za{os.getpid() % 100000}"
    try:
        lab = lab_up(name, hosts=1)
        # What the controller inherits: its own copies of the two pipe ends (ours are closed).
        adopt = (zygote.pid, os.dup(zygote.stdout.fileno()), os.dup(zygote.stdin.fileno()))
        zygote.stdout.close()
        zygote.stdin.close()

        async def scenario() -> tuple[dict, bool]:
            backend = LocalBackend(lab, log_dir=tmp_path, cwd=tmp_path, adopt_zygote=adopt)
            try:
                spec = InstanceSpec(name="app-1", service="app", index=1,
                                    command=(sys.executable, "-c", FACTS, str(tmp_path / "a.json"), "0"),
                                    env={"BOXER_INSTANCE_ID": "1" * 16}, placement=Placement.FUNCTION)
                handle = await backend.launch(spec)
                for _ in range(600):
                    if handle.ended:
                        break
                    await asyncio.sleep(0.05)
                return dict(handle.details), handle.ended
            finally:
                await backend.close()

        details, ended = asyncio.run(scenario())
        assert details["zygote"] == zygote.pid  # forked from the adopted one, not a new one
        assert ended and details["exit_status"] == 0, (tmp_path / "app-1.h1.log").read_text()[-2000:]
        assert json.loads((tmp_path / "a.json").read_text())["env"]["BOXER_LAB_HOST"] == "h1"
        assert zygote.wait(10) == 0  # the backend closed its stdin: it is gone
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()
        lab_down(name)

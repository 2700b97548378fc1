"""The vm host daemon and the controller's vm tier, over real TCP on loopback (no lab): the
protocol byte by byte, authentication both ways, start, exit, stop, a lost host, no host."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from boxer.backends.base import InstanceSpec, Placement
from boxer.backends.errors import CapacityError, LaunchError
from boxer.backends.vmhost import protocol
from boxer.backends.vmhost.daemon import HostDaemon, instance_argv
from boxer.backends.vmhost.tier import NoVmHost, StaticHosts, VmTier
from boxer.nat_traversal.auth import instance_token
from boxer.nat_traversal.wire import ProtocolError

SECRET = bytes.fromhex("ab" * 32)
TOKEN = protocol.host_token(SECRET)


def _pair(client_token: bytes = TOKEN) -> tuple[protocol.ServerSession, protocol.ClientSession]:
    return protocol.ServerSession(TOKEN, "p1", 2), protocol.ClientSession(client_token)


def test_handshake_byte_by_byte_then_start_and_exit() -> None:
    server, client = _pair()
    events: list[object] = []
    for byte in server.data_to_send():
        events += client.receive(bytes([byte]))
    assert client.hello == protocol.HostHello("p1", 2) and not events
    for byte in client.data_to_send():
        events += server.receive(bytes([byte]))
    assert events == ["authenticated"]
    server.welcome({"old.1": 42}, [protocol.Exited("gone.3", 1, "exited with status 1")])
    (welcome,) = client.receive(server.data_to_send())
    assert welcome == protocol.Welcome("p1", 2, {"old.1": 42}, [protocol.Exited("gone.3", 1, "exited with status 1")])
    client.start("web-1.1", {"name": "web-1"})
    client.stop("web-1.1", 2.5)
    assert server.receive(client.data_to_send()) == [protocol.StartRequested("web-1.1", {"name": "web-1"}),
                                                      protocol.StopRequested("web-1.1", 2.5)]
    server.started("web-1.1", 77)
    server.exited(protocol.Exited("web-1.1", 143, "stopped"))
    assert client.receive(server.data_to_send()) == [protocol.Started("web-1.1", 77),
                                                      protocol.Exited("web-1.1", 143, "stopped")]


def test_a_wrong_token_is_refused_with_a_reason_and_nothing_is_started() -> None:
    server, client = _pair(protocol.host_token(bytes.fromhex("cd" * 32)))
    client.receive(server.data_to_send())
    with pytest.raises(protocol.AuthFailed, match="wrong host token"):
        server.receive(client.data_to_send())
    with pytest.raises(protocol.AuthFailed, match="refused us: authentication failed"):
        client.receive(server.data_to_send())


def test_the_client_refuses_a_daemon_that_cannot_prove_the_token() -> None:
    impostor = protocol.ServerSession(protocol.host_token(bytes.fromhex("cd" * 32)), "p1", 1)
    client = protocol.ClientSession(TOKEN)
    client.receive(impostor.data_to_send())
    # The impostor skips the check (it cannot tell) and answers with a proof of its own token.
    impostor.authenticated, impostor._client_nonce = True, client._nonce  # type: ignore[attr-defined]
    impostor.welcome({}, [])
    with pytest.raises(protocol.AuthFailed, match="could not prove"):
        client.receive(impostor.data_to_send())


def test_before_auth_anything_else_is_a_protocol_error() -> None:
    server, client = _pair()
    client.receive(server.data_to_send())
    with pytest.raises(ProtocolError, match="expected auth"):
        server.receive(_frame({"t": "start", "ref": "x", "event": {}}))


def _frame(obj: dict) -> bytes:
    from boxer.nat_traversal.wire import encode_frame

    return encode_frame(obj, protocol.MAX_FRAME)


def test_instance_argv_is_the_handlers_without_a_lifetime(tmp_path: Path) -> None:
    from boxer.backends.aws_lambda.event import LambdaEvent
    from boxer.backends.aws_lambda.handler import AgentLaunch

    event = LambdaEvent.from_dict({"version": 2, "name": "web-1", "service": "web", "index": 1,
                                   "command": ["nginx", "-g", "daemon off;"], "coordinator": "198.18.0.1:7000",
                                   "instance": "0123456789abcdef", "token": "cd" * 32})
    argv = instance_argv(AgentLaunch(event, tmp_path / "s", 0.0))
    assert "--lifetime" not in argv
    assert argv[argv.index("--name") + 1] == "web-1" and argv[-4:] == ["--", "nginx", "-g", "daemon off;"]
    with_life = instance_argv(AgentLaunch(LambdaEvent(**{**event.__dict__, "lifetime": 60.0}), tmp_path / "s", 60.0))
    assert with_life[with_life.index("--lifetime") + 1] == "60.000"


# -- the daemon and the tier, over TCP ---------------------------------------------------------

def _spec(name: str = "web-1", index: int = 1) -> InstanceSpec:
    return InstanceSpec(name=name, service="web", index=index, command=("ignored",), placement=Placement.VM,
                        env={"GREETING": "hi"})


def _event(secret_file: Path):
    """The event a vm instance gets, as a function one: its id and its token, never the secret
    (the host daemon, which holds the secret's file here, passes none of it on)."""
    def event_for(spec: InstanceSpec) -> dict:
        return {"version": 2, "name": spec.name, "service": spec.service, "index": spec.index,
                "command": list(spec.command), "env": dict(spec.env), "coordinator": "127.0.0.1:7000",
                "instance": f"{spec.index:016x}", "token": instance_token(SECRET, f"{spec.index:016x}").hex()}
    return event_for


def _shell(script: str):
    """argv_for: a shell in place of boxer run, which writes what it was given and then runs `script`."""
    def argv_for(launch):
        return ["/bin/sh", "-c", 'echo "$BOXER_INSTANCE_NAME $GREETING $(cat $BOXER_INSTANCE_TOKEN_FILE)'
                ' ${BOXER_SECRET_FILE:-no-secret}" > '
                f'"$OUT/$BOXER_INSTANCE_NAME"; {script}']
    return argv_for


async def _daemon(tmp_path: Path, script: str, slots: int = 1) -> tuple[HostDaemon, str]:
    daemon = HostDaemon(TOKEN, host="p1", slots=slots, argv_for=_shell(script), token_dir=str(tmp_path),
                        base_env={**os.environ, "OUT": str(tmp_path), "BOXER_SECRET_FILE": str(tmp_path / "secret")})
    _, port = await daemon.serve("127.0.0.1", 0)
    return daemon, f"127.0.0.1:{port}"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET.hex() + "\n")
    return path


def test_launch_exit_and_stop_through_the_daemon(tmp_path: Path, secret_file: Path) -> None:
    async def main() -> None:
        daemon, address = await _daemon(tmp_path, "exec sleep 30", slots=2)
        tier = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=_event(secret_file),
                      stop_grace=2.0)
        try:
            first = await tier.launch(_spec())
            second = await tier.launch(_spec("web-2", 2))
            assert first.details["tier"] == "vm" and first.details["daemon"] == address and first.details["host"] == "p1"
            assert first.details["pid"] in [i.process.pid for i in daemon.instances.values()]
            await _until(lambda: (tmp_path / "web-1").exists() and (tmp_path / "web-2").exists())
            # What the instance got: its name, the service's env, the secret (in a 0600 file of its own).
            assert (tmp_path / "web-1").read_text().split() == ["web-1", "hi", instance_token(SECRET, f"{1:016x}").hex(),
                                                                "no-secret"]
            assert tier.status()["in_use"] == 2
            with pytest.raises(CapacityError):
                tier.host_wait = 0.3
                await tier.launch(_spec("web-3", 3))
            await tier.stop(first)
            assert first.ended and first.details["exit_status"] == 143  # SIGTERM
            # A slot is free again: the third goes where the first was.
            third = await tier.launch(_spec("web-3", 3))
            os.kill(third.details["pid"], 9)
            await _until(lambda: third.ended)
            assert third.state.value == "failed" and "status 137 on vm host p1" in str(third.reason)
            assert not list(tmp_path.glob("boxer-secret-*")) or len(list(tmp_path.glob("boxer-secret-*"))) == 1
        finally:
            await tier.close()
            await daemon.close(1.0)
        assert not daemon.instances and second.details["pid"]

    asyncio.run(main())


def test_no_vm_host_reachable_names_each_address_and_why(secret_file: Path) -> None:
    async def main() -> None:
        tier = VmTier(StaticHosts(["127.0.0.1:1", "127.0.0.1:2"]), TOKEN, backend="lambda",
                      event_for=_event(secret_file))
        with pytest.raises(NoVmHost) as caught:
            await tier.launch(_spec())
        text = str(caught.value)
        assert "no vm host reachable (127.0.0.1:1: Connect call failed" in text or "refused" in text.lower()
        assert "127.0.0.1:2" in text and "security group" in text
        empty = VmTier(StaticHosts([]), TOKEN, backend="lambda", event_for=_event(secret_file))
        with pytest.raises(NoVmHost, match="no vm host to start it on: 0 listed vm host"):
            await empty.launch(_spec())

    asyncio.run(main())


def test_a_daemon_of_another_deployment_is_not_used(tmp_path: Path, secret_file: Path) -> None:
    async def main() -> None:
        daemon, address = await _daemon(tmp_path, "exec sleep 30")
        tier = VmTier(StaticHosts([address]), protocol.host_token(bytes.fromhex("cd" * 32)), backend="lambda",
                      event_for=_event(secret_file))
        try:
            with pytest.raises(NoVmHost, match="wrong host token"):
                await tier.launch(_spec())
            assert not daemon.instances
        finally:
            await daemon.close(1.0)

    asyncio.run(main())


def test_a_bad_event_fails_the_launch_with_the_events_problems(tmp_path: Path, secret_file: Path) -> None:
    async def main() -> None:
        daemon, address = await _daemon(tmp_path, "exec sleep 30")
        tier = VmTier(StaticHosts([address]), TOKEN, backend="lambda",
                      event_for=lambda spec: {"version": 2, "name": spec.name})
        try:
            with pytest.raises(LaunchError, match="missing field"):
                await tier.launch(_spec())
        finally:
            await tier.close()
            await daemon.close(1.0)

    asyncio.run(main())


def test_exits_while_the_controller_was_away_reach_it_on_reconnect(tmp_path: Path, secret_file: Path) -> None:
    async def main() -> None:
        daemon, address = await _daemon(tmp_path, "sleep 0.5; exit 3")
        tier = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=_event(secret_file))
        try:
            handle = await tier.launch(_spec())
            link = next(iter(tier.links.values()))
            tier.reconnect_delay = 1.0  # the instance ends (0.5 s) while the controller is away
            assert link.writer is not None
            link.writer.transport.abort()  # the connection goes; the instance runs on
            await _until(lambda: not daemon.instances, 5)
            assert not handle.ended
            await _until(lambda: handle.ended, 5)  # the tier connects again; the welcome carries the exit
            assert handle.details["exit_status"] == 3 and link.up
        finally:
            await tier.close()
            await daemon.close(1.0)

    asyncio.run(main())


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_boxer_host_serve_refuses_to_start_without_a_credential(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "boxer", "host", "serve", "--listen", "127.0.0.1:7199"],
                            capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                 if k != "BOXER_SECRET_FILE"}, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("boxer: no credential for the host daemon: no deployment secret")


@pytest.mark.skipif(os.geteuid() != 0, reason="running instances as another user needs root")
def test_instances_run_as_their_own_user_and_read_only_their_token() -> None:
    """--run-as: the app runs as that uid; it reads its own token file and not the daemon's."""
    import shutil
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="bx-runas-"))  # under /tmp: that user can reach it
    out.chmod(0o777)
    daemon_token = out / "host-token"  # beside it, root's 0600: unreadable to the instance
    daemon_token.write_text(TOKEN.hex())
    daemon_token.chmod(0o600)

    def argv_for(launch):
        return ["/bin/sh", "-c", f'{{ id -u; cat "$BOXER_INSTANCE_TOKEN_FILE"; cat {daemon_token} || echo refused; }}'
                f' > {out}/got 2>/dev/null; exec sleep 30']

    async def main() -> None:
        daemon = HostDaemon(TOKEN, host="p1", run_as=(65534, 65534), argv_for=argv_for)
        _, port = await daemon.serve("127.0.0.1", 0)
        address = f"127.0.0.1:{port}"
        token = "ab" * 32
        tier = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=lambda spec: {
            "version": 2, "name": spec.name, "service": spec.service, "index": spec.index,
            "command": list(spec.command), "coordinator": "127.0.0.1:7000", "instance": "0123456789abcdef",
            "token": token})
        try:
            handle = await tier.launch(_spec())
            await _until(lambda: (out / "got").exists() and len((out / "got").read_text().split()) == 3)
            assert (out / "got").read_text().split() == ["65534", token, "refused"]
            await tier.stop(handle)
        finally:
            await tier.close()
            await daemon.close(1.0)

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(out, ignore_errors=True)



@pytest.mark.parametrize("content, message", [
    ("nothex", "the host token in {path} must be at least 32 hex digits"),
    ("ab" * 8, "the host token in {path} must be at least 32 hex digits"),  # 8 bytes: guessable
    (None, "cannot read the host token from {path}: No such file or directory"),
])
def test_boxer_host_serve_refuses_a_bad_token_file_in_one_line(tmp_path: Path, content: str | None,
                                                               message: str) -> None:
    """Before: any hex at all was a host token (8 bytes served), and a non-hex file failed with
    fromhex's message."""
    import subprocess

    path = tmp_path / "host-token"
    if content is not None:
        path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "boxer", "host", "serve", "--listen", "127.0.0.1:7199",
                             "--token-file", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "boxer: no credential for the host daemon: " + message.format(path=path)), result.stderr
    assert "abab" not in result.stderr and "nothex" not in result.stderr  # never the value


# -- an instance's output: kept on the host, read with `logs` ----------------------------------

def _ready_pair() -> tuple[protocol.ServerSession, protocol.ClientSession]:
    server, client = _pair()
    client.receive(server.data_to_send())
    assert server.receive(client.data_to_send()) == ["authenticated"]
    server.welcome({}, [])
    client.receive(server.data_to_send())
    assert client.ready
    return server, client


def test_logs_request_and_chunks_byte_by_byte() -> None:
    server, client = _ready_pair()
    client.logs(7, "web-1.1", 0)
    client.logs(8, "web-1.1", -4096)
    events: list[object] = []
    for byte in client.data_to_send():
        events += server.receive(bytes([byte]))
    assert events == [protocol.LogsRequested(7, "web-1.1", 0), protocol.LogsRequested(8, "web-1.1", -4096)]
    first = protocol.LogChunk(7, 0, b"hello\n\xff\x00", 1700000000.25, 20, True, False)
    last = protocol.LogChunk(7, 8, b"world\n", 1700000001.5, 20, True, True)
    server.log(first)
    server.log(last)
    server.log_failed(8, "no output of web-1.1 on vm host p1")
    wire = server.data_to_send()
    got: list[object] = []
    for byte in wire:
        got += client.receive(bytes([byte]))
    assert got == [first, last, protocol.LogFailed(8, "no output of web-1.1 on vm host p1")]
    # data travels as base64 (any bytes, JSON text); a full chunk's frame stays far under MAX_FRAME.
    assert b'"data": "aGVsbG8K/wA="' in wire or b'"data":"aGVsbG8K/wA="' in wire
    server.log(protocol.LogChunk(1, 0, b"x" * protocol.LOG_CHUNK, 1.0, protocol.LOG_CHUNK, False, True))
    assert len(server.data_to_send()) < protocol.MAX_FRAME // 3
    with pytest.raises(ValueError, match="at most"):
        server.log(protocol.LogChunk(1, 0, b"x" * (protocol.LOG_CHUNK + 1), 1.0, 0, False, True))


@pytest.mark.parametrize("frame, error", [
    ({"t": "logs", "id": 1, "ref": "web-1.1", "offset": -protocol.LOG_REQUEST - 1}, "offset must be"),
    ({"t": "logs", "id": -1, "ref": "web-1.1", "offset": 0}, "id must be"),
    ({"t": "logs", "id": 1, "ref": "", "offset": 0}, "ref must be"),
    ({"t": "logs", "id": 1, "ref": "web-1.1", "offset": 1.5}, "offset must be"),
])
def test_a_malformed_logs_request_is_a_protocol_error(frame: dict, error: str) -> None:
    server, _ = _ready_pair()
    with pytest.raises(ProtocolError, match=error):
        server.receive(_frame(frame))


@pytest.mark.parametrize("change, error", [
    ({"data": "not base64!"}, "not base64"),
    ({"data": "A" * (4 * protocol.LOG_CHUNK // 3 + 8)}, "at most"),
    ({"data": "\u00e9"}, "not base64"),
    ({"running": 1}, "running must be"),
    ({"end": None}, "end must be"),
    ({"offset": -1}, "offset must be"),
    ({"at": "now"}, "at must be"),
])
def test_a_malformed_log_chunk_is_a_protocol_error(change: dict, error: str) -> None:
    _, client = _ready_pair()
    frame = {"t": "log", "id": 1, "offset": 0, "data": "aGk=", "at": 1.0, "size": 2, "running": True,
             "end": True, **change}
    with pytest.raises(ProtocolError, match=error):
        client.receive(_frame(frame))


def test_logs_before_auth_is_refused() -> None:
    server, client = _pair()
    client.receive(server.data_to_send())
    with pytest.raises(ProtocolError, match="expected auth"):
        server.receive(_frame({"t": "logs", "id": 1, "ref": "web-1.1", "offset": 0}))


def test_instance_output_is_capped_rotated_and_read_in_timed_chunks(tmp_path: Path) -> None:
    from boxer.backends.vmhost.output import InstanceOutput

    clock = [1000.0]
    path = tmp_path / "web-1.p1.log"
    path.write_bytes(b"an earlier instance's line\n")
    output = InstanceOutput(path, cap=protocol.LOG_CHUNK * 2, wall=lambda: clock[0])
    output.write(b"one\n")
    clock[0] += 0.1
    output.write(b"two\n")  # the same quarter second: one mark
    clock[0] += 1.0
    output.write(b"three\n")
    start, pieces = output.read(0)
    assert start == 0 and pieces == [(0, b"one\ntwo\n", 1000.0), (8, b"three\n", 1001.1)]
    assert output.read(-6) == (8, [(8, b"three\n", 1001.1)])
    assert output.read(5) == (5, [(5, b"wo\n", 1000.0), (8, b"three\n", 1001.1)])
    # Past the cap the file is rotated to .1: what it held is no longer readable, the offsets go on.
    clock[0] += 1.0
    output.write(b"y" * (protocol.LOG_CHUNK * 2 - 10))
    assert (tmp_path / "web-1.p1.log.1").read_bytes().startswith(b"an earlier instance's line\none\n")
    assert path.stat().st_size == protocol.LOG_CHUNK * 2 - 10 and output.size == 14 + protocol.LOG_CHUNK * 2 - 10
    start, pieces = output.read(0)
    assert start == 14 and pieces[0][0] == 14 and [len(p[1]) for p in pieces] == [protocol.LOG_CHUNK,
                                                                                  protocol.LOG_CHUNK - 10]
    assert all(p[2] == 1002.1 for p in pieces)
    output.close()


def test_boxer_logs_reads_a_vm_instance_from_its_host_and_follows_it(tmp_path: Path, secret_file: Path) -> None:
    """The tier asks the daemon (real TCP) for an instance's output, all of it or from an offset,
    while it runs and after it ended; the controller's reader turns that into lines."""
    from boxer.controller.instance_logs import LogReader

    async def main() -> None:
        daemon, address = await _daemon(tmp_path, 'echo first; echo "second $GREETING"; '
                                        'while [ ! -e "$OUT/go" ]; do sleep 0.05; done; echo third; exec sleep 30')
        daemon.log_dir = tmp_path
        tier = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=_event(secret_file), stop_grace=1.0)
        try:
            handle = await tier.launch(_spec())
            ref = handle.details["ref"]
            await _until(lambda: daemon.outputs[ref].size >= len(b"first\nsecond hi\n"))
            read = await tier.read_log(address, ref, 0)
            assert b"".join(c.data for c in read.chunks) == b"first\nsecond hi\n" and read.running
            assert read.end == read.size == 16 and read.chunks[-1].end
            (tmp_path / "instances").mkdir()
            (tmp_path / "instances" / "index.jsonl").write_text(json.dumps(
                {"t": 1.0, "kind": "start", "name": "web-1", "service": "web", "host": "p1", "daemon": address,
                 "ref": ref}) + "\n")
            reader = LogReader(tmp_path / "instances", ["web"], vm_hosts=tier.read_log)
            lines = await reader.entries("web", None, final=False)
            assert [(e.instance, e.text) for e in lines] == [("web-1", "started on p1"), ("web-1", "first"),
                                                             ("web-1", "second hi")]
            assert await reader.entries("web", None, final=False) == []
            (tmp_path / "go").touch()
            await _until(lambda: daemon.outputs[ref].size > 16)
            assert [e.text for e in await reader.entries("web", None, final=False)] == ["third"]
            assert (tmp_path / "web-1.p1.log").read_bytes() == b"first\nsecond hi\nthird\n"
            await tier.stop(handle)
            after = await tier.read_log(address, ref, -6)
            assert b"".join(c.data for c in after.chunks) == b"third\n" and not after.running
            with pytest.raises(Exception, match="no output of web-9.9 on vm host p1"):
                await tier.read_log(address, "web-9.9", 0)
        finally:
            await tier.close()


def test_a_resumed_controller_adopts_its_vm_instances_through_the_daemons_welcome(tmp_path: Path,
                                                                                 secret_file: Path) -> None:
    """A controller starts two vm instances and goes (its tier closed: a crash, a SIGTERM); the
    next one adopts one of them (the other is not in its roster): the daemon's welcome binds the
    adopted handle to what runs there (its pid, its slot), the other counts as foreign, so the
    host is full; a stop of the adopted one goes through the daemon and frees its slot."""
    def spec(name: str, index: int, agent_id: str) -> InstanceSpec:
        return InstanceSpec(name=name, service="web", index=index, command=("ignored",), placement=Placement.VM,
                            env={"GREETING": "hi", "BOXER_INSTANCE_ID": agent_id})

    def event_for(spec: InstanceSpec) -> dict:  # its id travels as the event's own field, not in env
        event = _event(secret_file)(spec)
        event["env"] = {k: v for k, v in event["env"].items() if k != "BOXER_INSTANCE_ID"}
        return event

    async def main() -> None:
        daemon, address = await _daemon(tmp_path, "exec sleep 30", slots=2)
        before = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=event_for)
        first = await before.launch(spec("web-1", 1, "a" * 16))
        await before.launch(spec("web-2", 2, "b" * 16))
        assert first.details["ref"] == f"web-1.{'a' * 16}"  # the roster's agent id names it on the host
        await before.close()
        after = VmTier(StaticHosts([address]), TOKEN, backend="lambda", event_for=event_for,
                       stop_grace=2.0, host_wait=0.3)
        try:
            adopted = after.adopt(spec("web-1", 1, "a" * 16))
            await _until(lambda: "pid" in adopted.details)
            assert adopted.details["pid"] == first.details["pid"] and adopted.details["host"] == "p1"
            assert after.status()["in_use"] == 2 and not adopted.ended
            with pytest.raises(CapacityError):  # both slots taken: the adopted one and the foreign one
                await after.launch(spec("web-3", 3, "c" * 16))
            await after.stop(adopted)
            assert adopted.ended and adopted.details["exit_status"] == 143  # SIGTERM, from the daemon
            assert len(daemon.instances) == 1 and after.status()["in_use"] == 1
            third = await after.launch(spec("web-3", 3, "c" * 16))
            assert third.details["daemon"] == address
        finally:
            await after.close()
            await daemon.close(1.0)

    asyncio.run(main())

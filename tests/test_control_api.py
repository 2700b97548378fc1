"""The control API (controller/api): its generated stubs, its messages against the runtime's
status, and the real gRPC server and client on a Unix socket and on TCP with TLS."""

from __future__ import annotations

import asyncio
import filecmp
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("control_pb2.py", "control_pb2.pyi", "control_pb2_grpc.py")


def test_the_committed_stubs_are_generated_from_the_proto(tmp_path: Path) -> None:
    """control_pb2*.py are committed (no build step, no grpcio-tools where boxer is installed);
    this keeps them what control.proto generates. BOXER_REGENERATE=1 rewrites them in place."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install '.[test]')")
    script = ROOT / "scripts" / "generate-control-api.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    if os.environ.get("BOXER_REGENERATE"):
        subprocess.run([str(script)], check=True, env=env)
    subprocess.run([str(script), str(tmp_path)], check=True, env=env)
    stale = [name for name in STUBS
             if not filecmp.cmp(tmp_path / name, ROOT / "controller" / "api" / name, shallow=False)]
    assert not stale, f"{stale} differ from what control.proto generates: BOXER_REGENERATE=1 pytest {__file__}"


def _runtime_status() -> dict[str, Any]:
    """A status as the real ControllerRuntime builds it, with an instance in it."""
    from boxer.backends.base import InstanceHandle, InstanceSpec
    from boxer.controller.policy import Failure
    from boxer.controller.runtime import ControllerRuntime
    from boxer.controller.spec import Deployment
    from boxer.nat_traversal import messages as m

    class Backend:
        name = "fake"

        async def launch(self, spec: InstanceSpec) -> InstanceHandle:
            return InstanceHandle(spec=spec, backend=self.name, details={"host": "h1", "pid": 42})

        async def stop(self, handle: InstanceHandle) -> None:
            handle.mark_stopped()

        def status(self) -> dict[str, Any]:
            return {"backend": "fake", "function": "f", "region": "r",
                    "concurrency": {"limit": 4, "in_use": 1, "waiting": 0}, "throttled_total": 2}

        def describe(self) -> dict[str, Any]:
            return {"backend": "fake", "lab": "x", "vm_hosts": 1, "function_hosts": 2,
                    "vm_on_public_hosts": True, "busy": 1}

    async def scenario() -> dict[str, Any]:
        deployment = Deployment.model_validate({"services": {"web": {"command": ["nginx"], "minInstances": 1}}})
        backend = Backend()
        rt = ControllerRuntime(deployment, backend, coordinator=("127.0.0.1", 1), secret=b"x" * 32,
                               info={"name": "web", "backend": "local", "file": "/d.yaml", "pid": None,
                                     "lab": "x", "hosts": backend.describe()})

        class Session:
            async def send(self, message: Any) -> None:
                pass

            def close(self) -> None:
                pass

        rt._session = Session()
        await rt.tick(0.0)
        for _ in range(5):
            await asyncio.sleep(0)
        (record,) = rt.book.records.values()
        rt.book.on_message(m.InstanceUp(name="web-1", service="web", addr="100.64.0.2",
                                        instance=record.agent_id), 0.1)
        # A failure as decide() reports one: its exit status, log and what follows travel too.
        rt._on_failure(Failure(instance=record.agent_id, service="web", name="web-1", index=1,
                               reason="exited with status 3", exit_status=3, retry_in=2.0, restarts=1))
        status = rt.status()
        await rt.shutdown()
        return status

    return asyncio.run(scenario())


def test_a_runtime_status_fits_the_message_field_for_field() -> None:
    """Every key the runtime puts in its status is a field of DeploymentStatus (a key added
    without its field fails here), and it reads back the same."""
    from boxer.controller.api import control_pb2 as pb
    from boxer.controller.api.convert import from_dict, to_dict

    status = _runtime_status()
    assert status["instances"] and status["backend_status"]["concurrency"]["limit"] == 4
    assert status["failures"][0]["exit_status"] == 3 and status["failures"][0]["retry_in"] == 2.0
    back = to_dict(from_dict(pb.DeploymentStatus(), status))
    for key, value in status.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for got, want in zip(back[key], value, strict=True):
                assert {k: got[k] for k in want} == want, key
        elif isinstance(value, dict) and key == "services":
            assert {s: {k: back[key][s][k] for k in v} for s, v in value.items()} == value
        elif isinstance(value, dict):
            assert {k: back[key][k] for k in value} == value, key
        else:
            assert back[key] == value, key


def test_an_undeclared_status_key_is_named() -> None:
    from boxer.controller.api import control_pb2 as pb
    from boxer.controller.api.convert import ConversionError, from_dict

    with pytest.raises(ConversionError, match=r"instances\[0\]\.colour: not a field of boxer.control.v1.InstanceStatus"):
        from_dict(pb.DeploymentStatus(), {"instances": [{"name": "a", "colour": "red"}]})
    with pytest.raises(ConversionError, match="services.web.min: "):
        from_dict(pb.DeploymentStatus(), {"services": {"web": {"min": "one"}}})


# -- the server and the client, for real --------------------------------------------------------

class FakeRuntime:
    def __init__(self) -> None:
        self.ticks = 0
        self.book = type("Book", (), {"records": {"web-1.1": None, "web-2.2": None}})()

    def status(self) -> dict[str, Any]:
        return {"name": "web", "running": True, "connected": True, "updated_at": float(self.ticks),
                "services": {"web": {"min": 1, "max": 2, "desired": 2, "placement": "vm"}},
                "instances": [{"service": "web", "name": "web-1", "state": "ready", "address": None}]}

    async def next_tick(self) -> None:
        await asyncio.sleep(0.02)
        self.ticks += 1


class Server:
    """The real grpc.aio server in an event loop of its own thread, as in the controller."""

    def __init__(self, tmp: Path, tcp: Any = None) -> None:
        from boxer.controller.api.server import ApplyRefused, ControlService

        self.tmp = tmp
        self.stopped = threading.Event()
        self.applied: list[tuple[bytes, str, Any, Any]] = []
        (tmp / "instances").mkdir()
        (tmp / "controller.log").write_text("one\ntwo\nthree\n")

        def apply(content: bytes, path: str, max_concurrency: Any, register_timeout: Any) -> Any:
            if b"refuse" in content:
                raise ApplyRefused("these cannot change while it runs: services.web.placement",
                                   ["services.web.placement"])
            self.applied.append((content, path, max_concurrency, register_timeout))
            return ["services.web.minInstances: 1 -> 2"], ["web"]

        self.service = ControlService(FakeRuntime(), apply, self.stopped.set, tmp / "controller.log",
                                      tmp / "instances")
        self.socket = tmp / "control" / "sock"
        self.tcp = tcp
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from boxer.controller.api.server import serve

        async def main() -> None:
            self.servers = await serve(self.service, self.socket, self.tcp)
            self.ready.set()
            self.done = asyncio.Event()
            await self.done.wait()
            await asyncio.gather(*(s.stop(0) for s in self.servers))

        self.loop.run_until_complete(main())

    def __enter__(self) -> Server:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path) as running:
        yield running


def test_status_watch_down_and_logs_on_the_unix_socket(server: Server) -> None:
    from boxer.controller.api.client import ControlClient, LogLine

    assert stat.S_IMODE(server.socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o600
    with ControlClient(f"unix:{server.socket}") as client:
        status = client.status()
        assert status["name"] == "web" and status["services"]["web"]["desired"] == 2
        assert status["instances"][0]["address"] is None and status["lab"] is None  # unset: None
        seen = [s["updated_at"] for s, _ in zip(client.watch(timeout=10), range(3), strict=False)]
        assert len(seen) == 3 and seen == sorted(seen) and seen[0] < seen[-1]
        assert [(line.source, line.text) for line in client.logs(tail=2)] == [("controller", "two"),
                                                                               ("controller", "three")]
        from boxer.controller.instance_logs import InstanceLogBook

        log_path = server.tmp / "instances" / "web-1.h1.log"
        log_path.write_text("started\n")
        book = InstanceLogBook(server.tmp / "instances", wall=lambda: 100.0)
        book.started("web-1", "web", {"host": "h1", "pid": 7, "log": str(log_path), "log_offset": 0})
        book.sample([str(log_path)])
        lines = client.logs("web", follow=True, timeout=5)
        assert next(lines) == LogLine("web-1", "started on h1 (pid 7)", 100.0, "web", True)
        assert next(lines) == LogLine("web-1", "started", 100.0, "web", False)
        with open(log_path, "a") as log:
            log.write("listening on 80\n")
        book.wall = lambda: 101.5
        book.sample([str(log_path)])
        assert next(lines) == LogLine("web-1", "listening on 80", 101.5, "web", False)
        book.event("web-1", "web", "exited with status 127")
        assert next(lines) == LogLine("web-1", "exited with status 127", 101.5, "web", True)
        lines.close()
        book.close()
        assert client.down() == 2 and server.stopped.is_set()


def test_apply_answers_then_streams_and_a_refusal_is_one_error(server: Server) -> None:
    from boxer.controller.api.client import ControlClient, ControlError

    with ControlClient(f"unix:{server.socket}") as client:
        applied, statuses = client.apply(b"services: {}", "/srv/deploy.yaml", max_concurrency=7, timeout=10)
        assert applied.changes == ("services.web.minInstances: 1 -> 2",) and applied.rollouts == ("web",)
        assert next(statuses)["name"] == "web"
        statuses.close()
        assert server.applied == [(b"services: {}", "/srv/deploy.yaml", 7, None)]
        with pytest.raises(ControlError, match="the controller refused the change: these cannot change "
                                               "while it runs: services.web.placement"):
            client.apply(b"refuse", "/srv/deploy.yaml")
        with pytest.raises(ControlError, match="^no service or instance called 'nope': services none; instances "
                                               "none yet$"):
            list(client.logs("nope"))


def test_no_controller_is_a_one_line_error(tmp_path: Path) -> None:
    from boxer.controller.api.client import ControlClient, ControlError

    with ControlClient(f"unix:{tmp_path / 'sock'}") as client, \
            pytest.raises(ControlError, match=r"no controller answers on unix:.*sock"):
        client.status(timeout=2)


def test_tcp_needs_tls_and_the_credential(tmp_path: Path) -> None:
    from boxer.controller.api.client import ControlClient, ControlError
    from boxer.controller.api.server import TcpListener

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=controller.test",
                    "-addext", "subjectAltName=DNS:controller.test"], check=True, capture_output=True)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "t" * 32
    tcp = TcpListener(f"127.0.0.1:{port}", cert.read_bytes(), key.read_bytes(), token)
    with Server(tmp_path, tcp):
        good = ControlClient.remote(f"127.0.0.1:{port}", ca=cert.read_bytes(), token=token,
                                    server_name="controller.test")
        with good:
            assert good.status()["name"] == "web"
        bad = ControlClient.remote(f"127.0.0.1:{port}", ca=cert.read_bytes(), token="x" * 32,
                                   server_name="controller.test")
        with bad:
            with pytest.raises(ControlError, match="refused the credential"):
                bad.status()
            with pytest.raises(ControlError, match="refused the credential"):
                list(bad.watch(timeout=5))


def test_boxer_run_and_the_agent_never_import_grpc() -> None:
    """grpc is the controller side's: an instance (`boxer run`, the agent, the Lambda handler)
    neither needs it installed nor pays for importing it."""
    code = ("import sys, boxer.cli, boxer.cli.run, boxer.agent.runner, boxer.backends.aws_lambda.handler; "
            "boxer.cli.main.get_command(None, 'run'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_controller_host_runs_what_up_sends_one_at_a_time_and_its_streams_end_with_it(tmp_path: Path) -> None:
    """HostedControl: before Up every call but Up answers FAILED_PRECONDITION (one line: no
    deployment runs); Up starts one (its notes, then statuses); a second Up is refused while it
    runs; Down stops it, and a Watch that was open ends instead of waiting for a tick."""
    import grpc

    from boxer.controller.api.client import ControlClient, ControlError
    from boxer.controller.api.server import ApplyRefused, ControlService, HostedControl, serve

    (tmp_path / "instances").mkdir()
    (tmp_path / "controller.log").write_text("")
    sent: list[Any] = []

    async def up(request: Any, notes: list[str]) -> ControlService:
        if b"bad" in request.file:
            raise ApplyRefused("deploy.yaml:1: services: field required")
        sent.append(request)
        notes.append("lambda.outputs is ignored here")
        service = ControlService(FakeRuntime(), lambda *a: ([], []), lambda: None, tmp_path / "controller.log",
                                 tmp_path / "instances")
        service._stop = lambda: loop.call_later(0.1, ended, service)  # as the host: the run ends, then
        return service

    def ended(service: ControlService) -> None:
        service.ended.set()
        hosted.current = None

    hosted = HostedControl(up)
    loop = asyncio.new_event_loop()
    ready, done = threading.Event(), threading.Event()
    socket_path = tmp_path / "host" / "sock"

    async def main() -> None:
        servers = await serve(hosted, socket_path)
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await asyncio.gather(*(s.stop(0) for s in servers))

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        with ControlClient.at(f"unix:{socket_path}") as client:
            with pytest.raises(ControlError, match=r"^no deployment runs on the controller at unix:") as idle:
                client.status()
            assert idle.value.code is grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(ControlError, match="refused the deployment: deploy.yaml:1: services: field required"):
                client.up(b"bad", "/laptop/deploy.yaml", folder="web")
            applied, statuses = client.up(b"services: {}", "/laptop/web/deploy.yaml", folder="web", name="web",
                                          backend="lambda", register_timeout=45.0)
            assert applied.changes == ("lambda.outputs is ignored here",)
            assert next(statuses)["name"] == "web"
            (request,) = sent
            assert (request.path, request.folder, request.name, request.backend, request.register_timeout) == (
                "/laptop/web/deploy.yaml", "web", "web", "lambda", 45.0)
            with pytest.raises(ControlError, match="already runs deployment web: `boxer down` it first"):
                client.up(b"services: {}", "/laptop/other/deploy.yaml", folder="other")
            watching = client.watch(timeout=20)
            assert next(watching)["name"] == "web"
            assert client.down() == 2
            started = time.monotonic()
            rest = list(watching)  # ends with the deployment, well before its 20 s
            assert time.monotonic() - started < 5 and len(rest) < 200
            with pytest.raises(ControlError, match="no deployment runs"):
                client.status()
    finally:
        done.set()
        thread.join(10)
        loop.close()

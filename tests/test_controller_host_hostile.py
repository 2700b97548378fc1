"""The controller host (`python -m boxer.controller.daemon --serve`) against callers on its TCP
control port (TLS + token): no token, a wrong one, plain TCP, garbage bytes, an oversized Up,
Ups whose files fail validation (a schema error, a 532-byte alias bomb, 5000 nested brackets).
Each is refused in one line and the host keeps waiting for the next deployment: afterwards a
caller with the token is answered at once ("no deployment runs"), and the host process lives.

The host runs on loopback with the local backend and a lab that does not exist: nothing here
gets as far as starting an instance (tests/test_controller_host.py runs real deployments)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from boxer.controller.api import control_pb2 as pb
from boxer.controller.api import control_pb2_grpc as pb_grpc
from boxer.controller.api.client import MAX_FILE, ControlClient, ControlError

SERVER_NAME = "controller.test"
TOKEN = "k" * 40


class Host:
    def __init__(self, tmp_path: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is not installed: no certificate for the TLS tests")
        self.key, self.cert, token = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "token"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "1", "-subj", f"/CN={SERVER_NAME}",
                        "-addext", f"subjectAltName=DNS:{SERVER_NAME}"], check=True, capture_output=True)
        token.write_text(TOKEN + "\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp_path / "host.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "boxer.controller.daemon", "--serve", "--backend", "local",
                 "--lab", f"nolab{os.getpid()}", "--workdir", str(tmp_path),
                 "--control-socket", str(tmp_path / "host.sock"), "--control-listen", self.address,
                 "--control-cert", str(self.cert), "--control-key", str(self.key),
                 "--control-token-file", str(token)],
                env={**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "state")},
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"waiting for a deployment" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def client(self, token: str | None = TOKEN) -> ControlClient:
        if token is None:
            return ControlClient(self.address, credentials=grpc.ssl_channel_credentials(
                root_certificates=self.cert.read_bytes()), options=(("grpc.ssl_target_name_override", SERVER_NAME),))
        return ControlClient.remote(self.address, ca=self.cert.read_bytes(), token=token, server_name=SERVER_NAME)

    def still_waiting(self) -> None:
        """The host lives, and answers a caller with the token at once: no deployment runs."""
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        started = time.monotonic()
        with self.client() as good, pytest.raises(ControlError, match="no deployment runs on the controller"):
            good.status(timeout=5)
        assert time.monotonic() - started < 3

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    started = Host(tmp_path)
    try:
        yield started
    finally:
        started.stop()


VALID = b"services:\n  web:\n    command: [nginx]\n"


def test_no_token_a_wrong_token_and_plain_tcp_are_refused(host: Host) -> None:
    with host.client(token=None) as anonymous, pytest.raises(ControlError, match="refused the credential"):
        anonymous.status(timeout=5)
    with host.client(token="x" * 40) as wrong:
        with pytest.raises(ControlError, match="refused the credential: a valid control credential is required"):
            wrong.up(VALID, "deploy.yaml", folder="/app")
        with pytest.raises(ControlError, match="refused the credential"):
            wrong.down()
    # gRPC without TLS: the TLS handshake fails; the caller hears that no controller answers, and
    # that the port speaks TLS only (not only gRPC's "Socket closed").
    with ControlClient(host.address) as plain, pytest.raises(ControlError) as refused:
        plain.status(timeout=5)
    assert "no controller answers" in str(refused.value)
    assert "speaks TLS only" in str(refused.value) and "--controller-ca" in str(refused.value), refused.value
    # TLS with a certificate for another name: the CA and the server name are what to check.
    with ControlClient.remote(host.address, ca=host.cert.read_bytes(), token=TOKEN,
                              server_name="elsewhere.example") as misnamed, pytest.raises(ControlError) as failed:
        misnamed.status(timeout=5)
    assert "TLS handshake failed" in str(failed.value) and "'elsewhere.example'" in str(failed.value), failed.value
    # Raw bytes: an HTTP/2 preface in the clear, then garbage, then a TLS hello and silence.
    for data in (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0" * 64, os.urandom(4096), b""):
        with socket.create_connection(("127.0.0.1", host.port), timeout=5) as raw:
            if data:
                raw.sendall(data)
                raw.settimeout(5)
                try:
                    while raw.recv(65536):
                        pass  # the server answers with a TLS alert and closes
                except (ConnectionResetError, TimeoutError):
                    pass
    context = ssl.create_default_context(cafile=str(host.cert))
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # TLS, but not HTTP/2
        tls.settimeout(5)
        try:
            tls.recv(65536)
        except (ssl.SSLError, ConnectionResetError, TimeoutError):
            pass
    host.still_waiting()


def test_an_oversized_up_is_refused_in_one_line_and_by_the_server_too(host: Host) -> None:
    big = b"services:\n  web:\n    command: [nginx]\n# " + b"x" * (8 * 1024 * 1024) + b"\n"
    with host.client() as good, pytest.raises(ControlError) as caught:
        good.up(big, "deploy.yaml", folder="/app")
    assert str(caught.value) == f"deploy.yaml: 8.0 MiB is more than a controller takes: a deployment file may be at most {MAX_FILE // 1024} KiB"
    # A caller that is not our client: gRPC's own limit refuses it before anything of ours runs.
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=host.cert.read_bytes()),
        grpc.access_token_call_credentials(TOKEN))
    with grpc.secure_channel(host.address, credentials,
                             options=(("grpc.ssl_target_name_override", SERVER_NAME),)) as channel:
        stub = pb_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            next(stub.Up(pb.UpRequest(file=big, path="deploy.yaml", folder="/app"), timeout=30))
        assert raw.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in str(raw.value.details())
        # ... and our client's words for it, had it sent one.
        client = ControlClient(host.address)
        assert "a deployment file may be at most" in str(client._fail(raw.value))
        client.close()
    # Without the token, it is refused as well (whichever check comes first).
    with grpc.secure_channel(host.address, grpc.ssl_channel_credentials(root_certificates=host.cert.read_bytes()),
                             options=(("grpc.ssl_target_name_override", SERVER_NAME),)) as channel:
        with pytest.raises(grpc.RpcError) as anonymous:
            next(pb_grpc.ControlStub(channel).Up(pb.UpRequest(file=big, path="deploy.yaml"), timeout=30))
        assert anonymous.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED)
    host.still_waiting()


def _bomb() -> bytes:
    lines = ['  a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return ("x-bomb:\n" + "\n".join(lines) + "\nservices:\n  web:\n    command: [nginx]\n    env: {A: *a8}\n").encode()


@pytest.mark.parametrize(("content", "reason"), [
    (b"services:\n  web:\n    comand: [nginx]\n", "deploy.yaml:3: services.web.comand: unknown field"),
    (b"services: [", "deploy.yaml:1: (top level): not valid YAML"),
    (b"\xff\xfe not text", "deploy.yaml: not UTF-8 text"),
    (_bomb(), "the file expands to more than 100000 values"),
    (b"services: " + b"[" * 5000 + b"]" * 5000, "the file nests too deeply"),
    (VALID, "nolab"),  # valid, but this host's lab does not exist: refused, and it waits on
])
def test_an_up_that_fails_is_refused_with_why_and_the_host_waits_for_the_next(
        host: Host, content: bytes, reason: str) -> None:
    started = time.monotonic()
    with host.client() as good, pytest.raises(ControlError) as caught:
        good.up(content, "deploy.yaml", folder="/app")
    text = str(caught.value)
    assert text.startswith(f"the controller on {host.address} refused the deployment: "), text
    assert reason in text, text
    assert "\n" not in text
    assert time.monotonic() - started < 10
    host.still_waiting()
    # ... and refuses the next one for its own reason, not as "already runs".
    with host.client() as good, pytest.raises(ControlError, match="unknown field"):
        good.up(b"services:\n  web:\n    comand: [x]\n", "again.yaml", folder="/app")
    host.still_waiting()

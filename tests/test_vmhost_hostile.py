"""The vm host daemon (`boxer host serve`) against an adversary on its public port, over real TCP
on loopback: malformed and oversized frames, frames before authentication, a replayed proof, a
wrong token, a trickling handshake, an idle-connection flood (from several loopback addresses,
so the per-address cap can be told from the overall one) and a flood past the descriptor limit
(prlimit). Each refusal is counted, and after each the controller's real side (VmTier) still
connects and launches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from boxer.backends.base import InstanceSpec, Placement
from boxer.backends.vmhost import protocol
from boxer.backends.vmhost.daemon import HostDaemon
from boxer.backends.vmhost.tier import StaticHosts, VmTier
from boxer.nat_traversal.auth import instance_token

SECRET = bytes.fromhex("ab" * 32)
TOKEN = protocol.host_token(SECRET)


def _frame(obj: object) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return len(body).to_bytes(4, "big") + body


def _event(spec: InstanceSpec) -> dict:
    return {"version": 2, "name": spec.name, "service": spec.service, "index": spec.index,
            "command": ["ignored"], "coordinator": "127.0.0.1:7000", "instance": f"{spec.index:016x}",
            "token": instance_token(SECRET, f"{spec.index:016x}").hex()}


def _spec(index: int) -> InstanceSpec:
    return InstanceSpec(name=f"web-{index}", service="web", index=index, command=("ignored",),
                        placement=Placement.VM)


async def _daemon(tmp_path: Path, **limits: float) -> tuple[HostDaemon, int]:
    daemon = HostDaemon(TOKEN, host="p1", slots=4, token_dir=str(tmp_path),
                        argv_for=lambda launch: ["/bin/sh", "-c", "exec sleep 30"], **limits)  # type: ignore[arg-type]
    _, port = await daemon.serve("127.0.0.1", 0)
    return daemon, port


async def _launches(port: int, index: int, connect_timeout: float = 3.0) -> int:
    """The controller's side connects (its own handshake) and launches one instance: its pid."""
    tier = VmTier(StaticHosts([f"127.0.0.1:{port}"]), TOKEN, backend="lambda", event_for=_event,
                  connect_timeout=connect_timeout, stop_grace=1.0)
    try:
        handle = await tier.launch(_spec(index))
        pid = handle.details["pid"]
        await tier.stop(handle)
        assert handle.ended
        return int(pid)
    finally:
        await tier.close()


_OPENED: list[asyncio.StreamWriter] = []


async def _connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    _OPENED.append(writer)
    return reader, writer


async def _close_all() -> None:
    """The test's own connections (the daemon closes its ends; ours must close too)."""
    while _OPENED:
        writer = _OPENED.pop()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _hello(reader: asyncio.StreamReader) -> dict:
    length = int.from_bytes(await reader.readexactly(4), "big")
    return json.loads(await reader.readexactly(length))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the daemon sent before closing; AssertionError if it is still open after `seconds`."""
    received = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        raise AssertionError(f"the daemon kept the connection open for {seconds:g} s") from None
    except ConnectionResetError:
        pass
    return received


def _good_auth(hello: dict, token: bytes = TOKEN, nonce: str = "c" * 32) -> dict:
    return {"t": "auth", "v": 1, "nonce": nonce, "proof": protocol.proof(token, "controller", hello["nonce"], nonce)}


MALFORMED = {
    "not JSON": _frame(b"{\"t\": \"auth\", "),
    "not UTF-8": _frame(b"\xff\xfe{}"),
    "NaN": _frame(b'{"t": "auth", "v": NaN}'),
    "1e999": _frame(b'{"t": "auth", "v": 1e999}'),
    "deep nesting": _frame(b'{"t": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    "an int of 5000 digits": _frame(b'{"t": "auth", "v": ' + b"9" * 5000 + b"}"),
    "not an object": _frame([1, 2, 3]),
    "a kind that is a list": _frame({"t": [[["auth"]]]}),
    "an unknown kind": _frame({"t": "launch_all"}),
    "a start before auth": _frame({"t": "start", "ref": "x.1", "event": {}}),
    "a ping before auth": _frame({"t": "ping"}),
    "an empty frame": _frame(b""),
}
BAD_AUTH = {
    "a nonce that is a number": {"t": "auth", "v": 1, "nonce": 7, "proof": "00"},
    "a nonce of 10k characters": {"t": "auth", "v": 1, "nonce": "n" * 10_000, "proof": "00"},
}
REFUSED_AUTH = {
    "version 2": {"t": "auth", "v": 2, "nonce": "n", "proof": "00"},
    "version true": {"t": "auth", "v": True, "nonce": "n", "proof": "00"},
    "a proof that is a list": {"t": "auth", "v": 1, "nonce": "n", "proof": [1]},
    "a proof with non-ASCII text": {"t": "auth", "v": 1, "nonce": "n", "proof": "\u00e9" * 64},
    "no proof": {"t": "auth", "v": 1, "nonce": "n"},
}


def test_malformed_frames_and_bad_auths_are_refused_counted_and_the_daemon_serves_on(tmp_path: Path) -> None:
    async def main() -> None:
        daemon, port = await _daemon(tmp_path)
        try:
            cases = [*((name, data) for name, data in MALFORMED.items()),
                     *((name, _frame(frame)) for name, frame in BAD_AUTH.items())]
            for name, data in cases:
                reader, writer = await _connect(port)
                await _hello(reader)
                writer.write(data)
                assert await _closed_within(reader, 2.0) == b"", name
                writer.close()
            await asyncio.sleep(0.05)
            assert daemon.refusals["protocol"] == len(cases), daemon.refusals.counts
            for name, frame in REFUSED_AUTH.items():
                reader, writer = await _connect(port)
                await _hello(reader)
                writer.write(_frame(frame))
                answer = await _closed_within(reader, 2.0)
                # A refusal says why, in one frame, and the daemon closes.
                refused = json.loads(answer[4:])
                assert refused["t"] == "refused", name
                assert "protocol version" in refused["reason"] or "wrong host token" in refused["reason"], name
                writer.close()
            await asyncio.sleep(0.05)
            assert daemon.refusals["auth"] == len(REFUSED_AUTH), daemon.refusals.counts
            assert not daemon.instances and not daemon._unauthenticated
            assert await _launches(port, 1) > 0
        finally:
            await _close_all()
            await daemon.close(1.0)

    asyncio.run(main())


def test_an_oversized_length_is_refused_from_its_prefix_alone(tmp_path: Path) -> None:
    """A 4 GiB length is refused on its 4 bytes (nothing is allocated for it); before auth even a
    legal 200 KiB frame is refused once 4 KiB of it are held, without waiting for the rest."""
    async def main() -> None:
        daemon, port = await _daemon(tmp_path, auth_deadline=30.0)
        try:
            reader, writer = await _connect(port)
            await _hello(reader)
            writer.write(b"\xff\xff\xff\xff")
            assert await _closed_within(reader, 2.0) == b""
            reader, writer = await _connect(port)
            await _hello(reader)
            writer.write((200 * 1024).to_bytes(4, "big") + b"x" * 8192)
            assert await _closed_within(reader, 2.0) == b""
            await asyncio.sleep(0.05)
            assert daemon.refusals["protocol"] == 2
            assert await _launches(port, 1) > 0
        finally:
            await _close_all()
            await daemon.close(1.0)

    asyncio.run(main())


def test_a_replayed_auth_and_a_wrong_token_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        daemon, port = await _daemon(tmp_path)
        try:
            # A captured handshake: a real controller's auth, as an eavesdropper saw it.
            reader, writer = await _connect(port)
            hello = await _hello(reader)
            captured = _frame(_good_auth(hello))
            writer.write(captured)
            welcome = await _hello(reader)
            assert welcome["t"] == "welcome"
            writer.close()
            # Replayed on a new connection it is worthless: the daemon's nonce is new.
            reader, writer = await _connect(port)
            assert (await _hello(reader))["nonce"] != hello["nonce"]
            writer.write(captured)
            refused = json.loads((await _closed_within(reader, 2.0))[4:])
            assert refused == {"t": "refused", "reason": "authentication failed: wrong host token "
                                                         "(is this host from another deployment?)"}
            # A proof made with another deployment's token.
            reader, writer = await _connect(port)
            other = protocol.host_token(bytes.fromhex("cd" * 32))
            writer.write(_frame(_good_auth(await _hello(reader), other)))
            assert json.loads((await _closed_within(reader, 2.0))[4:])["t"] == "refused"
            await asyncio.sleep(0.05)
            assert daemon.refusals["auth"] == 2 and not daemon.instances
            assert await _launches(port, 1) > 0
        finally:
            await _close_all()
            await daemon.close(1.0)

    asyncio.run(main())


def test_a_handshake_trickled_a_byte_at_a_time_meets_one_deadline(tmp_path: Path) -> None:
    """The deadline is for the whole handshake: a byte every 0.3 s (each read well inside it)
    is closed 1 s after the accept, not held as long as the bytes keep coming."""
    async def main() -> None:
        daemon, port = await _daemon(tmp_path, auth_deadline=1.0)
        try:
            reader, writer = await _connect(port)
            hello = await _hello(reader)
            started = time.monotonic()
            auth = _frame(_good_auth(hello))

            async def trickle() -> None:
                for byte in auth[:-1]:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.3)

            trickling = asyncio.create_task(trickle())
            assert await _closed_within(reader, 4.0) == b""
            closed_after = time.monotonic() - started
            trickling.cancel()
            assert closed_after < 2.0, closed_after
            assert daemon.refusals["deadline"] == 1
            # An idle connection meets it too.
            reader, writer = await _connect(port)
            await _hello(reader)
            assert await _closed_within(reader, 2.0) == b""
            assert daemon.refusals["deadline"] == 2
            assert await _launches(port, 1) > 0
        finally:
            await _close_all()
            await daemon.close(1.0)

    asyncio.run(main())


def test_an_idle_flood_is_capped_per_address_and_in_all_while_the_controller_launches(tmp_path: Path) -> None:
    """Idle connections from 127.0.0.2-5 (the controller is 127.0.0.1): past 3 from one address a
    new one is closed at once; past 6 in all the oldest goes. The controller, one connection of
    its own, connects and launches through it."""
    async def main() -> None:
        daemon, port = await _daemon(tmp_path, unauthenticated=6, unauthenticated_per_source=3,
                                     auth_deadline=30.0)
        held = []
        try:
            for _ in range(3):
                held.append(await _connect(port, "127.0.0.2"))
                await _hello(held[-1][0])
            extra, _ = await _connect(port, "127.0.0.2")
            assert await _closed_within(extra, 2.0) == b""  # not even a hello
            assert daemon.refusals["unauthenticated-per-source"] == 1
            for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                for _ in range(2):
                    held.append(await _connect(port, source))
                    await _hello(held[-1][0])
            await asyncio.sleep(0.05)
            # 9 accepted, 6 kept: the three oldest (127.0.0.2's) were closed for the newer ones.
            assert len(daemon._unauthenticated) == 6
            assert daemon.refusals["unauthenticated"] == 3
            for reader, _ in held[:3]:
                assert await _closed_within(reader, 1.0) == b""
            assert sorted(daemon._per_source.items()) == [("127.0.0.3", 2), ("127.0.0.4", 2), ("127.0.0.5", 2)]
            assert await _launches(port, 1) > 0
            assert len(daemon._unauthenticated) <= 6
        finally:
            await _close_all()
            await daemon.close(1.0)

    asyncio.run(main())


# A daemon in its own process under a descriptor limit (argv[2]: its cap, or "default").
DAEMON = textwrap.dedent("""
    import asyncio, logging, sys
    from boxer.backends.vmhost import protocol
    from boxer.backends.vmhost.daemon import HostDaemon
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    async def main():
        cap = None if sys.argv[2] == "default" else int(sys.argv[2])
        daemon = HostDaemon(protocol.host_token(bytes.fromhex("ab" * 32)), host="p1", slots=2,
                            token_dir=sys.argv[1], argv_for=lambda launch: ["/bin/sh", "-c", "exec sleep 30"],
                            auth_deadline=2.0, unauthenticated=cap)
        _, port = await daemon.serve("127.0.0.1", 0)
        print(port, daemon.unauthenticated_cap, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def _flood(port: int, sources: list[str], per_source: int, seconds: float) -> dict[str, int]:
    """Holds `per_source` connections from each source, opening a new one whenever the daemon
    closes one, for `seconds`; how many were opened and closed."""
    import selectors

    sel = selectors.DefaultSelector()
    counts = {"opened": 0, "closed": 0}

    def open_one(source: str) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ, source)
        counts["opened"] += 1

    for source in sources:
        for _ in range(per_source):
            open_one(source)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                counts["closed"] += 1
                open_one(key.data)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return counts


@pytest.mark.parametrize("cap", ["default", "64"])
def test_a_flood_against_a_descriptor_limit_leaves_the_daemon_serving(tmp_path: Path, cap: str) -> None:
    """Under prlimit's 64 descriptors, 12 addresses x 8 idle connections, reopened as soon as
    they are closed. By default the daemon caps unauthenticated connections within its limit,
    (64 - 24) / 2 = 20: the flood never takes the last descriptors, and the controller connects
    and launches in the middle of it. With a cap of 64 set by hand, accept() meets EMFILE: the
    accept loop counts it, pauses 0.1 s, logs a line per 10 s (asyncio.start_server's logged
    28,366 tracebacks in 6 s) and serves on, and the controller launches once the flood ends."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    log_path = tmp_path / "daemon.log"  # a file: a pipe nobody reads would fill and block its logging
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([prlimit, "--nofile=64", sys.executable, "-c", DAEMON, str(tmp_path), cap],
                                stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert proc.stdout is not None
        port_text, held = proc.stdout.readline().split()
        port = int(port_text)
        assert int(held) == (20 if cap == "default" else 64)
        import threading

        result: dict[str, int] = {}
        flood = threading.Thread(target=lambda: result.update(
            _flood(port, [f"127.0.0.{i}" for i in range(2, 14)], 8, 8.0)))
        flood.start()
        time.sleep(2.0)  # the flood is on, and has met the limit
        if cap == "default":
            pids = [asyncio.run(_launches(port, i, connect_timeout=10.0)) for i in (1, 2)]
            assert all(pid > 0 for pid in pids)
        flood.join()
        assert result["closed"] > 50, result  # the daemon kept closing them (caps, deadline)
        assert proc.poll() is None, "the daemon died"
        assert asyncio.run(_launches(port, 3)) > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    if cap == "default":
        assert "refused (unauthenticated)" in log and "refused (accept)" not in log, log
    else:  # the descriptors, not the cap, ran out first: the deadline freed them
        assert "refused (deadline)" in log, log
        accepts = [line for line in log.splitlines() if "refused (accept)" in line]
        assert accepts and accepts[0].endswith("cannot accept: Too many open files; pausing 0.1 s"), log
        assert len(log.splitlines()) < 10, log


def test_boxer_host_serve_flags_set_the_caps(tmp_path: Path) -> None:
    """`boxer host serve --auth-deadline 0.5 --unauthenticated-per-source 1`: the second idle
    connection from one address is closed at once, the first 0.5 s after its accept (5 s and 8
    by default)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN.hex())
    with socket.socket() as probe:  # --listen takes no port 0: a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "boxer", "host", "serve", "--listen", f"127.0.0.1:{port}",
                             "--token-file", str(token_file), "--auth-deadline", "0.5",
                             "--unauthenticated-per-source", "1", "--unauthenticated", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"serving on 127.0.0.1:{port}" in line, line
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert first.recv(4), "no hello"
        accepted = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
            assert second.recv(65536) == b""  # closed before its hello: the address holds one
        while first.recv(65536):
            pass
        held = time.monotonic() - accepted
        first.close()
        assert 0.4 < held < 2.0, held
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

"""`boxer logs`: what the controller writes beside the instances' logs (controller/instance_logs.py:
the index of starts and exits, when each log grew), how it reads back (one instance's part of a
log shared with its predecessor on the same host, times, tail, since, follow), CloudWatch Logs
for the lambda backend (moto's server, through aiobotocore), and the command on what a stopped
deployment left (no lab: its state files only). A deployed lab instance whose binary is
misspelled is in tests/test_deploy_lab.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boxer.controller.instance_logs import InstanceLogBook, LogEntry, LogReader, UnknownLogTarget

BOXER = [sys.executable, "-m", "boxer"]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)


def _two_runs(folder: Path) -> tuple[InstanceLogBook, Clock, Path]:
    """web-1 on h1 prints, exits 127, is started again on h1 (same file) and prints again; web-2
    on h2 prints once. Ticks at 1000, 1001, 1002, 1003."""
    folder.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    book = InstanceLogBook(folder, wall=clock)
    log1, log2 = folder / "web-1.h1.log", folder / "web-2.h2.log"
    book.started("web-1", "web", {"host": "h1", "pid": 11, "log": str(log1), "log_offset": 0})
    book.started("web-2", "web", {"host": "h2", "pid": 12, "log": str(log2), "log_offset": 0})
    _write(log1, "boxer: pythn3: command not found\n")
    _write(log2, "listening on 80\n")
    clock.now = 1001.0
    book.sample([str(log1), str(log2)])
    book.event("web-1", "web", "exited with status 127")
    book.event("web-1", "web", "started again at once")
    clock.now = 1002.0
    book.started("web-1", "web", {"host": "h1", "pid": 13, "log": str(log1), "log_offset": log1.stat().st_size})
    _write(log1, "second run\npartial")
    clock.now = 1003.0
    book.sample([str(log1), str(log2)])
    return book, clock, log1


def test_each_instance_reads_as_its_lines_between_its_starts_and_exits(tmp_path: Path) -> None:
    book, _, _ = _two_runs(tmp_path)
    reader = LogReader(tmp_path, ["web", "api"])
    entries = asyncio.run(reader.entries("web", None))
    assert [(e.time, e.instance, e.event, e.text) for e in entries] == [
        (1000.0, "web-1", True, "started on h1 (pid 11)"),
        (1000.0, "web-2", True, "started on h2 (pid 12)"),
        (1001.0, "web-1", False, "boxer: pythn3: command not found"),
        (1001.0, "web-2", False, "listening on 80"),
        (1001.0, "web-1", True, "exited with status 127"),
        (1001.0, "web-1", True, "started again at once"),
        (1002.0, "web-1", True, "restarted on h1 (pid 13)"),
        (1003.0, "web-1", False, "second run"),
        (1003.0, "web-1", False, "partial"),  # a last line without its newline: shown once read whole
    ]
    book.close()


def test_an_instance_tail_and_since(tmp_path: Path) -> None:
    book, _, _ = _two_runs(tmp_path)
    one = asyncio.run(LogReader(tmp_path).entries(None, "web-2"))
    assert [e.text for e in one] == ["started on h2 (pid 12)", "listening on 80"]
    tail = asyncio.run(LogReader(tmp_path).entries("web", None, tail=2))
    assert [(e.instance, e.text) for e in tail] == [
        ("web-2", "started on h2 (pid 12)"), ("web-2", "listening on 80"),
        ("web-1", "second run"), ("web-1", "partial")]
    since = asyncio.run(LogReader(tmp_path).entries("web", None, since=1002.0))
    assert [e.text for e in since] == ["restarted on h1 (pid 13)", "second run", "partial"]
    book.close()


def test_an_unknown_name_lists_the_services_and_instances(tmp_path: Path) -> None:
    book, _, _ = _two_runs(tmp_path)
    reader = LogReader(tmp_path, ["web", "api"])
    assert reader.resolve("api") == ("api", None)  # declared, never started: no lines, no error
    assert reader.resolve("web-2") == (None, "web-2")
    with pytest.raises(UnknownLogTarget, match=r"^no service or instance called 'wbe': services api, web; "
                                               r"instances web-1, web-2$"):
        reader.resolve("wbe")
    book.close()


def test_following_gives_new_lines_and_new_instances_once_timed(tmp_path: Path) -> None:
    book, clock, log1 = _two_runs(tmp_path)
    reader = LogReader(tmp_path)
    first = asyncio.run(reader.entries("web", None, final=False))
    assert first[-1].text == "second run"  # "partial" is still being written
    assert asyncio.run(reader.entries("web", None, final=False)) == []
    _write(log1, " line\n")
    log3 = tmp_path / "web-3.h3.log"
    clock.now = 1004.0
    book.started("web-3", "web", {"host": "h3", "log": str(log3), "log_offset": 0})
    _write(log3, "hello from 3\n")
    assert [e.text for e in asyncio.run(reader.entries("web", None, final=False))] == [
        "started on h3"]  # lines no tick has timed yet wait for it
    clock.now = 1004.25
    book.sample([str(log1), str(log3)])
    assert [(e.time, e.instance, e.text) for e in asyncio.run(reader.entries("web", None, final=False))] == [
        (1004.25, "web-1", "partial line"), (1004.25, "web-3", "hello from 3")]
    book.close()


def test_the_writer_notes_only_logs_that_grew(tmp_path: Path) -> None:
    clock = Clock()
    book = InstanceLogBook(tmp_path, wall=clock)
    log = tmp_path / "a-1.h1.log"
    log.write_text("old run\n")
    book.started("a-1", "a", {"host": "h1", "log": str(log), "log_offset": log.stat().st_size})
    book.sample([str(log)])
    assert not Path(f"{log}.times").exists()  # nothing new since the start
    _write(log, "x\n")
    book.sample([str(log)])
    book.sample([str(log)])
    assert Path(f"{log}.times").read_text() == f"{log.stat().st_size} 1000.0\n"
    book.close()
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert index == [{"t": 1000.0, "kind": "start", "name": "a-1", "service": "a", "host": "h1", "log": str(log),
                      "log_offset": 8}]


# -- CloudWatch Logs (the lambda backend), moto's server through aiobotocore ----------------------

REGION = "eu-west-1"


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    pytest.importorskip("flask", reason="moto's server needs flask (pip install '.[test]')")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint)
    client = boto3.client("logs", region_name=REGION, endpoint_url=endpoint)
    # moto's state is this process's, whichever server serves it: each test starts from none
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    try:
        yield client
    finally:
        urllib.request.urlopen(reset, timeout=10).close()
        server.stop()


def _invocation(client: Any, stream: str, request: str, start_ms: int, lines: list[str]) -> None:
    """What the Lambda service writes for one invocation: START, the output, END, REPORT."""
    messages = [f"START RequestId: {request} Version: $LATEST\n", *(f"{line}\n" for line in lines),
                f"END RequestId: {request}\n",
                f"REPORT RequestId: {request}\tDuration: 1200.00 ms\tBilled Duration: 1200 ms\t"
                "Memory Size: 1769 MB\tMax Memory Used: 80 MB\t\n"]
    client.put_log_events(logGroupName="/aws/lambda/boxer-demo", logStreamName=stream,
                          logEvents=[{"timestamp": start_ms + 10 * i, "message": m} for i, m in enumerate(messages)])


def test_a_lambda_instance_reads_its_invocation_from_cloudwatch(cloudwatch: Any, tmp_path: Path) -> None:
    from boxer.controller.instance_logs import LambdaSource

    started = int(time.time()) * 1000
    cloudwatch.create_log_group(logGroupName="/aws/lambda/boxer-demo")
    stream = "2026/12/02/[$LATEST]0123456789abcdef"
    cloudwatch.create_log_stream(logGroupName="/aws/lambda/boxer-demo", logStreamName=stream)
    # One execution environment runs two invocations one after the other, in one stream.
    _invocation(cloudwatch, stream, "req-other", started, ["not ours"])
    _invocation(cloudwatch, stream, "req-kv1", started + 1000, ["redis ready", "sh: 1: redis-servr: not found"])
    book = InstanceLogBook(tmp_path, wall=lambda: started / 1000)
    book.started("kv-1", "kv", {"request_id": "req-kv1", "function": "boxer-demo"}, region=REGION)
    book.close()

    async def read() -> list[LogEntry]:
        source = LambdaSource(poll=0)
        try:
            return await LogReader(tmp_path, cloudwatch=source.entries).entries("kv", None)
        finally:
            await source.close()

    entries = asyncio.run(read())
    assert [(e.event, e.text) for e in entries] == [
        (True, "started as invocation req-kv1"),
        (True, "invocation req-kv1 started"),
        (False, "redis ready"),
        (False, "sh: 1: redis-servr: not found"),
        (True, "invocation ended: Duration: 1200.00 ms, Billed Duration: 1200 ms, Memory Size: 1769 MB, "
               "Max Memory Used: 80 MB"),
    ]
    assert entries[2].time == pytest.approx(started / 1000 + 1.01)  # CloudWatch's own time


def test_cloudwatch_without_the_log_group_is_no_lines_yet(cloudwatch: Any, tmp_path: Path) -> None:
    from boxer.controller.instance_logs import LambdaSource

    book = InstanceLogBook(tmp_path, wall=time.time)
    book.started("kv-1", "kv", {"request_id": "req-1", "function": "boxer-demo"}, region=REGION)
    book.close()

    async def read() -> list[LogEntry]:
        source = LambdaSource(poll=0)
        try:
            return await LogReader(tmp_path, cloudwatch=source.entries).entries(None, "kv-1")
        finally:
            await source.close()

    assert [e.text for e in asyncio.run(read())] == ["started as invocation req-1"]


# -- the command, on what a stopped deployment left ------------------------------------------------

@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    root = tmp_path / "deploy"
    folder = root / "shop"
    (folder / "instances").mkdir(parents=True)
    (folder / "deployment.json").write_text(json.dumps({
        "name": "shop", "file": "/srv/deploy.yaml", "dir": "/srv", "backend": "local", "lab": "shopd",
        "created_at": 900.0, "controller_pid": None, "down_at": 2000.0}))
    (folder / "deployment.yaml").write_text("services:\n  web: {command: [nginx]}\n  api: {command: [api]}\n")
    (folder / "controller.log").write_text(
        json.dumps({"t": 1000.5, "level": "warning", "logger": "x", "message": "web-1 is crash-looping"}) + "\n")
    book, _, _ = _two_runs(folder / "instances")
    book.close()
    env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(root), "BOXER_CONFIG_DIR": str(tmp_path / "config")}
    yield env, folder


def _boxer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXER, *args], env=env, capture_output=True, text=True, timeout=60)


def test_logs_of_a_stopped_deployment_read_what_it_left(stopped: tuple[dict[str, str], Path]) -> None:
    env, _ = stopped
    done = _boxer(env, "logs", "web-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1970-01-01T00:16:40.000Z web-1    * started on h1 (pid 11)",
        "1970-01-01T00:16:41.000Z web-1    | boxer: pythn3: command not found",
        "1970-01-01T00:16:41.000Z web-1    * exited with status 127",
        "1970-01-01T00:16:41.000Z web-1    * started again at once",
        "1970-01-01T00:16:42.000Z web-1    * restarted on h1 (pid 13)",
        "1970-01-01T00:16:43.000Z web-1    | second run",
        "1970-01-01T00:16:43.000Z web-1    | partial",
    ]
    followed = _boxer(env, "logs", "-f", "--tail", "1", "web-2")
    assert followed.returncode == 0 and followed.stdout.splitlines() == [
        "1970-01-01T00:16:41.000Z web-2    | listening on 80"]
    assert followed.stderr == "boxer: deployment shop is stopped: no more lines will come\n"
    lines = [json.loads(line) for line in _boxer(env, "logs", "-o", "json", "--tail", "1", "web").stdout.splitlines()]
    assert lines == [
        {"time": 1001.0, "instance": "web-2", "service": "web", "kind": "output", "text": "listening on 80"},
        {"time": 1003.0, "instance": "web-1", "service": "web", "kind": "output", "text": "partial"}]
    controller = _boxer(env, "logs", "--controller-log")
    assert controller.stdout == "1970-01-01T00:16:40.500Z controller | WARNING web-1 is crash-looping\n"


def test_logs_errors_are_one_line_that_lists_what_exists(stopped: tuple[dict[str, str], Path]) -> None:
    env, _ = stopped
    unknown = _boxer(env, "logs", "wbe")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == ("boxer: no service or instance called 'wbe': services api, web; "
                              "instances web-1, web-2\n")
    bare = _boxer(env, "logs")
    assert (bare.returncode, bare.stderr) == (1, "boxer: name a service or an instance: services api, web; "
                                                 "instances web-1, web-2 (`boxer logs SERVICE`)\n")
    since = _boxer(env, "logs", "--since", "yesterday", "web")
    assert since.returncode == 2 and since.stderr.endswith(
        "Error: Invalid value for '--since': cannot read 'yesterday': give a duration before now (90s, 5m, "
        "1h30m), a clock time today (14:05 or 14:05:30) or an ISO date and time\n")
    nosuch = _boxer(env, "logs", "--name", "nosuch", "web")
    assert (nosuch.returncode, nosuch.stderr) == (1, "boxer: no deployment named 'nosuch': known here: shop "
                                                     "(`boxer ls` shows them)\n")


def test_logs_into_a_closed_pipe_is_quiet(stopped: tuple[dict[str, str], Path]) -> None:
    env, folder = stopped
    with open(folder / "instances" / "web-2.h2.log", "a") as log:
        log.write("line\n" * 200_000)
    shell = subprocess.run(f"{' '.join(BOXER)} logs web-2 | head -1", shell=True, env=env, capture_output=True,
                           text=True, timeout=60)
    assert shell.stdout.endswith("web-2    * started on h2 (pid 12)\n")
    assert shell.stderr == ""


@pytest.mark.parametrize("text", ["a\nbb\nccc\ndddd\n", "a\nbb\nccc\ndddd", "\n\nx\n", "one line", ""])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_a_tail_reads_only_the_end_of_a_log(tmp_path: Path, text: str, block: int) -> None:
    """--tail N seeks to the start of the last N lines, reading backwards, and gives what reading
    it all would (`boxer logs --tail 10` of a 7.7 MB, 200k-line log: 2.0 s and 103 MB before,
    0.55 s and 41 MB after, on this 2-core machine at load 5)."""
    from boxer.controller.instance_logs import _Segment, _start_of_last_lines

    log = tmp_path / "x-1.h1.log"
    log.write_bytes(b"old instance\n" + text.encode())
    segment = _Segment("x-1", "x", 0.0, log=str(log), start=len(b"old instance\n"))
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for tail in (1, 2, 3, 10):
        start = _start_of_last_lines(segment, tail, block=block)
        got = log.read_bytes()[start:].decode().split("\n")
        if got and got[-1] == "":
            got.pop()
        assert got == lines[-tail:], (tail, start)


def test_following_a_lambda_instance_gives_its_new_cloudwatch_lines_until_its_end(cloudwatch: Any,
                                                                                   tmp_path: Path) -> None:
    from boxer.controller.instance_logs import LambdaSource

    group, stream = "/aws/lambda/boxer-demo", "2026/12/02/[$LATEST]feed"
    started = int(time.time()) * 1000
    cloudwatch.create_log_group(logGroupName=group)
    cloudwatch.create_log_stream(logGroupName=group, logStreamName=stream)

    def put(at_ms: int, *messages: str) -> None:
        cloudwatch.put_log_events(logGroupName=group, logStreamName=stream,
                                  logEvents=[{"timestamp": at_ms + i, "message": m} for i, m in enumerate(messages)])

    put(started, "START RequestId: req-f Version: $LATEST\n", "first\n")
    book = InstanceLogBook(tmp_path, wall=lambda: started / 1000)
    book.started("kv-1", "kv", {"request_id": "req-f", "function": "boxer-demo"}, region=REGION)
    book.close()

    async def follow() -> list[list[str]]:
        source = LambdaSource(poll=0)
        reader = LogReader(tmp_path, cloudwatch=source.entries)
        try:
            rounds = [[e.text for e in await reader.entries("kv", None, final=False)]]
            put(started + 100, "second\n")
            rounds.append([e.text for e in await reader.entries("kv", None, final=False)])
            rounds.append([e.text for e in await reader.entries("kv", None, final=False)])
            put(started + 200, "END RequestId: req-f\n", "REPORT RequestId: req-f\tDuration: 3.00 ms\t\n",
                "START RequestId: req-next Version: $LATEST\n", "someone else's\n")
            rounds.append([e.text for e in await reader.entries("kv", None, final=False)])
            rounds.append([e.text for e in await reader.entries("kv", None, final=False)])
            return rounds
        finally:
            await source.close()

    assert asyncio.run(follow()) == [
        ["started as invocation req-f", "invocation req-f started", "first"],
        ["second"],
        [],
        ["invocation ended: Duration: 3.00 ms"],
        [],  # the invocation ended: its stream is not read again (the next one is another's)
    ]


def test_a_new_run_starts_a_new_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`boxer up` of a stopped deployment: its logs show the new run's instances, not the last's."""
    from boxer.controller.bringup import _fresh_state
    from boxer.controller.paths import DeployPaths

    monkeypatch.setenv("BOXER_DEPLOY_STATE_ROOT", str(tmp_path / "deploy"))
    paths = DeployPaths("shop")
    book, _, log1 = _two_runs(paths.instances)
    book.close()
    (tmp_path / "deploy.yaml").write_text("services:\n  web: {command: [nginx]}\n")
    _fresh_state(paths, tmp_path / "deploy.yaml")
    reader = LogReader(paths.instances, ["web"])
    assert reader.resolve("web") == ("web", None) and reader.instances() == []
    assert log1.exists()  # the output itself stays (the new instances append to it)


def test_logs_of_a_deployment_on_a_controller_host_come_through_its_control_api(tmp_path: Path) -> None:
    """`boxer logs --controller unix:PATH`: no state here, the controller there streams them."""
    from test_control_api import Server

    srv = tmp_path / "srv"
    srv.mkdir()
    server = Server(srv)
    book, _, _ = _two_runs(srv / "instances")
    book.close()
    env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "none"), "BOXER_CONFIG_DIR": str(tmp_path / "c")}
    with server:
        there = f"unix:{server.socket}"
        shown = _boxer(env, "logs", "--controller", there, "--tail", "1", "web")
        unknown = _boxer(env, "logs", "--controller", there, "wbe")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["1970-01-01T00:16:41.000Z web-2    | listening on 80",
                                         "1970-01-01T00:16:43.000Z web-1    | partial"]
    assert (unknown.returncode, unknown.stderr) == (1, "boxer: no service or instance called 'wbe': services web; "
                                                       "instances web-1, web-2\n")


def test_cloudwatch_failing_at_a_running_controller_is_said_as_such(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller answers, CloudWatch does not (here: no AWS credentials): the one line says
    CloudWatch's error, not that no controller answers."""
    from test_control_api import Server

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    srv = tmp_path / "srv"
    srv.mkdir()
    server = Server(srv)  # in this process: it has the environment above
    book = InstanceLogBook(srv / "instances", wall=Clock())
    book.started("kv-1", "kv", {"request_id": "req-1", "function": "boxer-demo", "region": REGION})
    book.close()
    env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "state"), "BOXER_CONFIG_DIR": str(tmp_path / "c")}
    with server:
        shown = _boxer(env, "logs", "--controller", f"unix:{server.socket}", "kv-1")
    assert shown.returncode == 1
    assert shown.stderr.startswith(f"boxer: the controller on unix:{server.socket}: cannot read CloudWatch Logs "
                                   "of /aws/lambda/boxer-demo: "), shown.stderr
    assert "no controller answers" not in shown.stderr and len(shown.stderr.splitlines()) == 1

"""Instance logs as `boxer logs` shows them: each instance's output, with a time and the
instance's name, and what the controller did to it (started, exited, stopped) in between.

The lab backends append an instance's output (its agent's and its program's) to
instances/<name>.<host>.log; the program writes there itself, so its lines carry no time, and
one file holds every instance of that name that ran on that host. The controller keeps two
things beside them (InstanceLogBook, once a tick):

    instances/index.jsonl   one line per instance event: `start` (name, service, host, the log
                            and the offset where this instance's output begins, or the Lambda
                            request id), and `event`s with a text (exited with status 127 ...)
    <log>.times             "<size> <time>" for each tick the log had grown: a line's time is the
                            first tick that saw it whole, i.e. within a tick (0.25 s) of its write

A Lambda instance's output is in CloudWatch Logs (the function's log group, found by the
invocation's request id between `START RequestId: ...` and `END RequestId: ...`), with
CloudWatch's own times (cloudwatch_entries).

A vm instance's output (the lambda backend's vm tier, on AWS or lambda-local) stays on its vm
host: its index entry names the host daemon and the instance's ref there, and the reader asks
that daemon (`logs`, boxer.backends.vmhost.protocol) through the running controller's vm tier,
with the host's own times of each line (host_entries). Once the controller has stopped, nothing
holds the host token to ask with, and only its start and exit are shown.

Reading is the same while the controller runs (the control API's Logs, controller/api/server.py)
and after it stopped (`boxer logs` reads the files itself).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["InstanceLogBook", "LambdaSource", "LogEntry", "LogReader", "LogSourceError", "UnknownLogTarget",
           "cloudwatch_entries", "lambda_source"]

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
TIMES_SUFFIX = ".times"
LINE_LIMIT = 16384  # bytes of one output line kept (a program writing no newline for a megabyte)


@dataclass(frozen=True)
class LogEntry:
    """One line: `event` False for the instance's own output, True for what the controller
    did or saw (started, exited, stopped)."""

    time: float
    instance: str
    service: str
    text: str
    event: bool = False
    starts: bool = field(default=False, compare=False)  # an instance's start (or its invocation's)

    def order(self) -> tuple[float, int]:
        # At one time: a start before the output it produced, an exit after it.
        return (self.time, 0 if self.starts else 2 if self.event else 1)


class UnknownLogTarget(LookupError):
    """Neither a service nor an instance of this name; the message names those that exist."""


# -- the writer, in the controller ----------------------------------------------------------------

class InstanceLogBook:
    """What the controller writes beside the instances' logs (see the module docstring)."""

    def __init__(self, folder: Path, wall: Any = time.time) -> None:
        self.folder = folder
        self.wall = wall
        self._sizes: dict[str, int] = {}
        self._index: Any = None

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            if self._index is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._index = open(self.folder / INDEX, "a", buffering=1)  # noqa: SIM115
            self._index.write(json.dumps(entry, separators=(",", ":")) + "\n")
        except OSError as exc:  # a full disk must not stop the controller
            log.warning("cannot write %s: %s", self.folder / INDEX, exc)

    def started(self, name: str, service: str, details: dict[str, Any], region: str | None = None) -> None:
        """An instance was launched; `details` is its handle's (host, log, log_offset, pid, or
        request_id and function)."""
        entry: dict[str, Any] = {"t": round(self.wall(), 3), "kind": "start", "name": name, "service": service}
        for key in ("host", "pid", "log", "log_offset", "request_id", "function", "daemon", "ref"):
            if details.get(key) is not None:
                entry[key] = details[key]
        if region and details.get("request_id"):
            entry["region"] = region
        self._write(entry)
        if isinstance(details.get("log"), str):
            self._sizes[details["log"]] = int(details.get("log_offset") or 0)

    def event(self, name: str, service: str, text: str) -> None:
        self._write({"t": round(self.wall(), 3), "kind": "event", "name": name, "service": service,
                     "text": text})

    def sample(self, logs: Iterable[str]) -> None:
        """Once a tick: note the size of every live instance's log that grew, and when."""
        now = round(self.wall(), 3)
        live = set()
        for path in logs:
            live.add(path)
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size > self._sizes.get(path, 0):
                self._sizes[path] = size
                try:
                    with open(path + TIMES_SUFFIX, "a") as times:
                        times.write(f"{size} {now}\n")
                except OSError as exc:
                    log.warning("cannot write %s%s: %s", path, TIMES_SUFFIX, exc)
        for gone in set(self._sizes) - live:  # a stopped instance's log: sampled one last time above
            del self._sizes[gone]

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None


# -- the reader -----------------------------------------------------------------------------------

@dataclass
class _Segment:
    """One instance's part of a log file (the lab), or its invocation (Lambda)."""

    name: str
    service: str
    started_at: float
    log: str | None = None
    start: int = 0
    end: int | None = None  # where the next instance of the same name and host began
    request_id: str | None = None
    function: str | None = None
    region: str | None = None
    daemon: str | None = None  # a vm instance: its host daemon ("ip:port") and its ref there
    ref: str | None = None
    position: int = -1  # how far it has been read (follow); -1: not yet
    partial: bytes = b""
    cloudwatch: dict[str, Any] = field(default_factory=dict)


def _new_lines(path: str | Path, offset: int) -> tuple[list[str], int]:
    """The whole lines a file gained past `offset`, and the offset after them. A line still
    being written (no newline yet) is left for the next call; a missing file has none."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            chunk = file.read()
    except OSError:
        return [], offset
    complete = chunk[:chunk.rfind(b"\n") + 1]
    return complete.decode(errors="replace").splitlines(), offset + len(complete)


class _Times:
    """A log's <log>.times, read on as it grows: the time of the tick that saw a byte offset."""

    def __init__(self, path: str) -> None:
        self.path = path + TIMES_SUFFIX
        self.marks: list[tuple[int, float]] = []
        self._read = 0

    def refresh(self) -> None:
        lines, self._read = _new_lines(self.path, self._read)
        for line in lines:
            size, _, at = line.partition(" ")
            try:
                self.marks.append((int(size), float(at)))
            except ValueError:
                continue

    def at(self, offset: int) -> float | None:
        """When the byte before `offset` was first seen, or None when no tick has seen it yet."""
        low, high = 0, len(self.marks)
        while low < high:  # the first mark whose size reaches `offset`
            mid = (low + high) // 2
            if self.marks[mid][0] < offset:
                low = mid + 1
            else:
                high = mid
        return self.marks[low][1] if low < len(self.marks) else None


class LogReader:
    """The logs of a deployment's instances, from its instances/ folder. `entries(names)` gives
    what is there now; calling it again gives only what was added since (follow)."""

    def __init__(self, folder: Path, services: Iterable[str] = (), cloudwatch: Any = None,
                 vm_hosts: Any = None) -> None:
        self.folder = folder
        self.declared = set(services)  # services of the deployment file (some may never have run)
        self.cloudwatch = cloudwatch  # async (segment, since) -> entries, for Lambda instances
        self.vm_hosts = vm_hosts  # async (daemon, ref, offset) -> its answer (VmTier.read_log), for vm instances
        self._index_read = 0
        self._segments: list[_Segment] = []
        self._events: list[LogEntry] = []
        self._events_given = 0
        self._times: dict[str, _Times] = {}

    def refresh(self) -> None:
        """Read what the index gained since the last call."""
        lines, self._index_read = _new_lines(self.folder / INDEX, self._index_read)
        for line in lines:
            try:
                entry = json.loads(line)
                self._take(entry)
            except (ValueError, KeyError, TypeError):
                continue

    def _take(self, entry: dict[str, Any]) -> None:
        name, service, at = str(entry["name"]), str(entry["service"]), float(entry["t"])
        if entry["kind"] == "start":
            segment = _Segment(name, service, at, log=entry.get("log"), start=int(entry.get("log_offset") or 0),
                               request_id=entry.get("request_id"), function=entry.get("function"),
                               region=entry.get("region"), daemon=entry.get("daemon"), ref=entry.get("ref"))
            if segment.log is not None:
                for earlier in self._segments:  # the one before it in the same file ends here
                    if earlier.log == segment.log and earlier.end is None:
                        earlier.end = segment.start
            again = any(s.name == name for s in self._segments)
            self._segments.append(segment)
            where = f"on {entry['host']}" if entry.get("host") else (
                f"as invocation {segment.request_id}" if segment.request_id else "")
            pid = f" (pid {entry['pid']})" if entry.get("pid") else ""
            verb = "restarted" if again else "started"
            self._events.append(LogEntry(at, name, service, f"{verb} {where}{pid}".rstrip(), True, starts=True))
        else:
            self._events.append(LogEntry(at, name, service, str(entry.get("text", "")), True))

    # -- naming what to show --

    def services(self) -> set[str]:
        return self.declared | {s.service for s in self._segments}

    def instances(self) -> list[str]:
        seen: dict[str, None] = {}
        for segment in self._segments:
            seen.setdefault(segment.name, None)
        return list(seen)

    def resolve(self, target: str) -> tuple[str | None, str | None]:
        """(service, None) or (None, instance) for a name; UnknownLogTarget when it is neither."""
        self.refresh()
        if target in self.services():
            return target, None
        if target in self.instances():
            return None, target
        services = ", ".join(sorted(self.services())) or "none"
        instances = ", ".join(self.instances()) or "none yet"
        raise UnknownLogTarget(f"no service or instance called {target!r}: services {services}; "
                               f"instances {instances}")

    # -- the lines --

    async def entries(self, service: str | None, instance: str | None, *, since: float | None = None,
                      tail: int = 0, final: bool = True) -> list[LogEntry]:
        """What is new since the last call, of `service`'s instances (past and new) or of one
        `instance`, in time order. `final`: the logs are not written any more (a stopped
        deployment, or the first read: a line no tick has timed yet gets its file's time);
        otherwise such a line waits for the next call, unless it is older than a second."""
        self.refresh()

        def wanted(name: str, of: str) -> bool:
            return name == instance if instance is not None else of == service

        out = [e for e in self._events[self._events_given:] if wanted(e.instance, e.service)]
        self._events_given = len(self._events)
        for segment in self._segments:
            if not wanted(segment.name, segment.service):
                continue
            if segment.log is not None:
                if tail > 0 and segment.position < 0:  # only the end of it is wanted: skip the rest
                    segment.position = _start_of_last_lines(segment, tail)
                out += self._file_lines(segment, final)
            elif segment.daemon is not None and segment.ref is not None and self.vm_hosts is not None:
                out += await host_entries(self.vm_hosts, segment, tail, final)
            elif segment.request_id is not None and self.cloudwatch is not None:
                out += await self.cloudwatch(segment, since)
        if since is not None:
            out = [e for e in out if e.time >= since]
        out.sort(key=LogEntry.order)
        if tail > 0:
            out = _tail_per_instance(out, tail)
        return out

    def _file_lines(self, segment: _Segment, final: bool) -> list[LogEntry]:
        assert segment.log is not None
        times = self._times.setdefault(segment.log, _Times(segment.log))
        times.refresh()
        if segment.position < 0:
            segment.position = segment.start
        try:
            with open(segment.log, "rb") as file:
                mtime = os.fstat(file.fileno()).st_mtime
                file.seek(segment.position)
                chunk = file.read(-1 if segment.end is None else max(0, segment.end - segment.position))
        except OSError:
            return []
        data = segment.partial + chunk
        base = segment.position - len(segment.partial)  # the file offset of data[0]
        out = []
        used = 0
        now = time.time()
        while (newline := data.find(b"\n", used)) >= 0:
            at = times.at(base + newline + 1)
            if at is None:  # no tick has seen it yet
                if not final and now - mtime < 1.0:
                    break  # the next call will have its time
                at = mtime
            out.append(self._line(segment, at, data[used:newline]))
            used = newline + 1
        rest = data[used:]
        if rest and b"\n" not in rest and (final or segment.end is not None):
            # The instance's last words without a newline: nothing will follow them.
            out.append(self._line(segment, times.at(base + len(data)) or mtime, rest))
            rest = b""
        segment.partial = rest
        segment.position = base + len(data)
        return out

    @staticmethod
    def _line(segment: _Segment, at: float, raw: bytes) -> LogEntry:
        return LogEntry(at, segment.name, segment.service, raw[:LINE_LIMIT].decode(errors="replace").rstrip("\r"))


def _start_of_last_lines(segment: _Segment, lines: int, block: int = 65536) -> int:
    """The offset in the segment's log where its last `lines` lines begin (reading backwards a
    block at a time: a tail of a long log need not read it all)."""
    assert segment.log is not None
    try:
        with open(segment.log, "rb") as file:
            end = segment.end if segment.end is not None else file.seek(0, 2)
            if end <= segment.start:
                return segment.start
            file.seek(end - 1)
            inside = lines if file.read(1) == b"\n" else lines - 1  # newlines within those lines
            position, data = end, b""
            while data.count(b"\n") <= inside:  # until the newline before them is read
                if position <= segment.start:
                    return segment.start
                step = min(block, position - segment.start)
                position -= step
                file.seek(position)
                data = file.read(step) + data
    except OSError:
        return segment.start
    index = len(data)
    for _ in range(inside + 1):
        index = data.rindex(b"\n", 0, index)
    return position + index + 1


def _tail_per_instance(entries: list[LogEntry], tail: int) -> list[LogEntry]:
    """The last `tail` entries of each instance, in the same order (docker compose's --tail)."""
    left: dict[str, int] = {}
    kept = []
    for entry in reversed(entries):
        count = left.get(entry.instance, 0)
        if count < tail:
            left[entry.instance] = count + 1
            kept.append(entry)
    return kept[::-1]


# -- vm hosts, for the vm tier --------------------------------------------------------------------

HOST_TAIL_BYTES = 1024 * 1024  # of a vm instance's output read for --tail (one answer's worth)
HOST_READS = 16  # answers (of at most 1 MiB each) read per call: a follower reads the rest next time


async def host_entries(read_log: Any, segment: _Segment, tail: int, final: bool) -> list[LogEntry]:
    """A vm instance's new lines, asked from its host daemon from where the last call ended.
    A chunk's time is the host's for each of its lines; output the host rotated away before it
    was read is one event saying how much."""
    if segment.position < 0:
        segment.position = -HOST_TAIL_BYTES if tail > 0 else 0
    out: list[LogEntry] = []
    running = True
    if segment.cloudwatch.get("unreadable"):
        return []
    for _ in range(HOST_READS):
        try:
            answer = await read_log(segment.daemon, segment.ref, segment.position)
        except LogSourceError as exc:  # once, and the other instances are still shown
            segment.cloudwatch["unreadable"] = True
            return out + [LogEntry(time.time(), segment.name, segment.service,
                                   f"cannot read its output: {exc}", True)]
        running = answer.running
        if segment.position >= 0 and answer.chunks and answer.start > segment.position:
            skipped = answer.start - segment.position
            out.append(LogEntry(answer.chunks[0].at, segment.name, segment.service,
                                f"{skipped} bytes of output skipped (rotated away on its vm host)", True))
            segment.partial = b""
        for chunk in answer.chunks:
            data = segment.partial + chunk.data
            lines = data.split(b"\n")
            segment.partial = lines.pop()
            out += [LogEntry(chunk.at, segment.name, segment.service,
                             raw[:LINE_LIMIT].decode(errors="replace").rstrip("\r")) for raw in lines]
            if len(segment.partial) > LINE_LIMIT:  # a line without end: shown in pieces
                out.append(LogEntry(chunk.at, segment.name, segment.service,
                                    segment.partial[:LINE_LIMIT].decode(errors="replace")))
                segment.partial = b""
        if answer.chunks:
            segment.position = answer.end
        if not answer.chunks or answer.end >= answer.size:
            break
    if segment.partial and (final or not running):  # its last words without a newline
        out.append(LogEntry(time.time(), segment.name, segment.service,
                            segment.partial.decode(errors="replace").rstrip("\r")))
        segment.partial = b""
    return out


# -- CloudWatch Logs, for the lambda backend --------------------------------------------------------

async def cloudwatch_entries(client: Any, segment: _Segment, since: float | None) -> list[LogEntry]:
    """The lines of one invocation (by its request id) from the function's log group, past what
    an earlier call gave. `client`: an aiobotocore `logs` client. The invocation's own START,
    END and REPORT lines become events (REPORT: its duration and memory)."""
    state = segment.cloudwatch
    if state.get("done"):
        return []
    group = f"/aws/lambda/{segment.function}"
    request = segment.request_id
    if "stream" not in state:
        start_ms = int((since if since is not None else segment.started_at) * 1000) - 60_000
        found = await client.filter_log_events(logGroupName=group, filterPattern=f'"START RequestId: {request}"',
                                               startTime=max(0, start_ms))
        starts = [e for e in found.get("events", []) if f"START RequestId: {request}" in e.get("message", "")]
        if not starts:
            return []  # not started yet, or its log not delivered yet (CloudWatch lags seconds)
        state["stream"] = starts[0]["logStreamName"]
        state["from"] = int(starts[0]["timestamp"])
    call: dict[str, Any] = {"logGroupName": group, "logStreamName": state["stream"], "startFromHead": True}
    if state.get("token"):
        call["nextToken"] = state["token"]
    else:
        call["startTime"] = state["from"]
    out = []
    while True:
        page = await client.get_log_events(**call)
        for event in page.get("events", []):
            if state.get("done"):
                break
            at = float(event["timestamp"]) / 1000
            for text in str(event.get("message", "")).rstrip("\n").split("\n"):
                line = _lambda_line(text, request, at, segment)
                if line is not None:
                    out.append(line)
                if text.startswith(f"REPORT RequestId: {request}"):
                    state["done"] = True
        token = page.get("nextForwardToken")
        if not page.get("events") or token == call.get("nextToken") or state.get("done"):
            if token:
                state["token"] = token
            break
        call.pop("startTime", None)
        call["nextToken"] = state["token"] = token
    return out


def _lambda_line(text: str, request: str | None, at: float, segment: _Segment) -> LogEntry | None:
    """An output line, an event for the invocation's own START / END / REPORT lines, or None for
    another invocation's (one stream runs its environment's invocations one after another)."""
    for marker in ("START", "END", "REPORT"):
        if text.startswith(f"{marker} RequestId: "):
            if not text.startswith(f"{marker} RequestId: {request}"):
                return None
            if marker == "REPORT":
                figures = text.split("\t")[1:]
                return LogEntry(at, segment.name, segment.service,
                                "invocation ended: " + ", ".join(f.strip() for f in figures if f.strip()), True)
            if marker == "END":
                return None
            return LogEntry(at, segment.name, segment.service, f"invocation {request} started", True, starts=True)
    return LogEntry(at, segment.name, segment.service, text.rstrip("\r"))


CLOUDWATCH_POLL = 2.0  # seconds between looks at one invocation's stream (CloudWatch's API limits)


class LogSourceError(Exception):
    """CloudWatch Logs refused or could not be reached; the message says which and why."""


class LambdaSource:
    """CloudWatch Logs through aiobotocore, a client per region made on first use (the lab
    never needs one). `entries` is what LogReader calls for a Lambda instance."""

    def __init__(self, poll: float = CLOUDWATCH_POLL) -> None:
        self.poll = poll
        self._clients: dict[str, tuple[Any, Any]] = {}
        self._looked: dict[int, float] = {}

    async def _client(self, region: str) -> Any:
        if region not in self._clients:
            from aiobotocore.session import get_session  # lazily: the lab backends never need it

            context = get_session().create_client("logs", region_name=region)
            self._clients[region] = (await context.__aenter__(), context.__aexit__)
        return self._clients[region][0]

    async def entries(self, segment: _Segment, since: float | None) -> list[LogEntry]:
        now = time.monotonic()
        if segment.cloudwatch.get("done") or now - self._looked.get(id(segment), -self.poll) < self.poll:
            return []
        self._looked[id(segment)] = now
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await cloudwatch_entries(await self._client(segment.region or "us-east-1"), segment, since)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ResourceNotFoundException":
                return []  # no log group or stream yet: the function has not logged
            raise LogSourceError(f"CloudWatch Logs refused reading /aws/lambda/{segment.function}: "
                                 f"{error.get('Code')}: {error.get('Message')}") from None
        except BotoCoreError as exc:
            raise LogSourceError(f"cannot read CloudWatch Logs of /aws/lambda/{segment.function}: {exc}") from None

    async def close(self) -> None:
        for _client, leave in self._clients.values():
            await leave(None, None, None)
        self._clients.clear()


def lambda_source() -> LambdaSource:
    return LambdaSource()

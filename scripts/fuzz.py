#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of everything that parses or acts on a peer's input.

    python scripts/fuzz.py                      # every target, 1,000,000 runs each
    python scripts/fuzz.py decoder --runs 20000 # one target
    python scripts/fuzz.py --report fuzz.json   # ... and write the figures as JSON

Targets (each runs in its own process, since atheris owns the process it fuzzes):

* `decoder`: bytes -> FrameDecoder (the 64 KiB upstream and the 16 MiB downstream limit) ->
  messages.decode. Only ProtocolError may come out; what decodes must encode and decode to
  the same message.
* `broker`: a session of operations on the coordinator's Broker from up to four peers (connect,
  authenticate properly, any message, lose the connection, time passes, flush). It must never
  raise, and every message it sends must encode within the downstream limit and decode, at
  the receiver, to the same message.
* `controller`: the controller's inputs (Snapshot, InstanceUp/Down/Quiet/Report, Demand,
  Members...) as decoded from fuzzed frames, into the Book, with exits, launches and stops,
  then signals -> decide() -> actions_for. Nothing may raise.
* `ipc`: the interposer <-> agent message (boxer/agent/ipc.py): unpack of any bytes raises
  only IpcError; what unpacks packs and unpacks to the same message.
* `vmhost`: bytes -> the vm host daemon's protocol (boxer/backends/vmhost/protocol.py), both
  ends, each fresh or past its handshake, fed in pieces; a start's event -> LambdaEvent. Only
  ProtocolError (EventError for the event) may come out. Past the handshake, a `log` chunk of
  fuzzed bytes the daemon sends must reach the controller as the same chunk, and any chunk the
  controller accepts holds at most LOG_CHUNK bytes.
* `handshake`: the vm host handshake between a daemon and a controller (the right token or
  another), with an attacker in between who delivers, cuts, injects fuzzed frames and replays
  frames captured from an earlier connection. Nothing but ProtocolError may come out, and no
  end may count the other as authenticated unless both hold the same token.

A finding stops its target with atheris' crash report and a `crash-*` file holding the input
(in the current folder); the summary names it. Needs `pip install atheris` (the `fuzz` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

TARGETS = ("decoder", "broker", "controller", "ipc", "vmhost", "handshake")


# -- shared: structured values from the fuzzer's bytes ---------------------------------------------

NAMES = ["web", "web-1", "web-2", "api", "api-1", "kv", "Bad!", "", "a" * 64]
TOKENS = ["00000001", "0000000a", "deadbeefdeadbeef", "ab" * 8, "cd" * 8, "zz", "0" * 65]
ADDRS = ["100.64.0.1", "100.64.0.2", "100.64.0.254", "100.64.255.254", "10.0.0.1", "1.2.3", "0.0.0.0"]
ENDPOINTS = ["198.18.1.1:40000", "198.18.1.2:5", "1.2.3.4:0", "x:1"]
NUMBERS = [0, 1, -1, 7, 80, 65535, 65536, 2**31, 2**53 - 1, 2**53, 10**400, 0.5, -0.0, 1e308,
           float("inf"), float("nan"), 900, 901, 3600, 3601]


def value(fdp, depth: int = 0, pools: dict | None = None):
    pools = pools or {}
    kind = fdp.ConsumeIntInRange(0, 13 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**40), 2**40)
    if kind == 3:
        return fdp.PickValueInList(NUMBERS)
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return fdp.PickValueInList(NAMES + pools.get("names", []))
    if kind == 6:
        return fdp.PickValueInList(TOKENS + pools.get("tokens", []))
    if kind == 7:
        return fdp.PickValueInList(ADDRS)
    if kind == 8:
        return fdp.PickValueInList(ENDPOINTS)
    if kind == 9:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20))
    if kind in (10, 11):
        return [value(fdp, depth + 1, pools) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {str(value(fdp, depth + 1, pools)): value(fdp, depth + 1, pools)
            for _ in range(fdp.ConsumeIntInRange(0, 4))}


def message_wire(fdp, types: list[str], pools: dict | None = None) -> dict:
    """A message-shaped JSON object: a type, its fields (some missing, some odd), maybe extra."""
    from boxer.nat_traversal import messages as m

    kind = fdp.PickValueInList(types)
    wire: dict = {"t": kind}
    for name, required, _ in m._schema(m.MESSAGE_TYPES[kind]):
        if required or fdp.ConsumeBool():
            if name == "report" or (name == "instances" and fdp.ConsumeBool()):
                wire[name] = report_like(fdp, pools) if name == "report" else [
                    snapshot_entry(fdp, pools) for _ in range(fdp.ConsumeIntInRange(0, 3))]
            else:
                wire[name] = value(fdp, 0, pools)
    if fdp.ConsumeIntInRange(0, 15) == 0:
        wire[fdp.PickValueInList(["x", "t2", "v"])] = value(fdp, 0, pools)
    return wire


def report_like(fdp, pools: dict | None = None) -> dict:
    report = {"active": 0, "accepted": 0, "connected": 0, "cpu": 0.0, "rss": 0, "listening": [80],
              "idle": 0.0, "direct": 0, "relayed": 0}
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        key = fdp.PickValueInList([*report, "first_try", "draining", "lifetime_left", "exited", "t"])
        report[key] = value(fdp, 1, pools)
    return report


def snapshot_entry(fdp, pools: dict | None = None) -> dict:
    pools = pools or {}
    entry = {"name": fdp.PickValueInList(NAMES + pools.get("names", [])), "service": "web",
             "addr": fdp.PickValueInList(ADDRS), "instance": fdp.PickValueInList(TOKENS + pools.get("tokens", [])),
             "nat": "eim", "draining": fdp.ConsumeBool(), "quiet": fdp.ConsumeBool(),
             "report": report_like(fdp, pools) if fdp.ConsumeBool() else None}
    if fdp.ConsumeIntInRange(0, 7) == 0:
        entry[fdp.PickValueInList(list(entry))] = value(fdp, 1, pools)
    return entry


def through_the_wire(wire: dict, max_frame: int):
    """`wire` as a peer's frame would reach us: JSON (NaN and inf as Python writes them),
    framed, decoded. None when it is refused (ProtocolError), which is a pass."""
    from boxer.nat_traversal import messages as m
    from boxer.nat_traversal.wire import FrameDecoder, ProtocolError

    try:
        body = json.dumps(wire).encode()
    except (ValueError, RecursionError):
        return None
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(len(body).to_bytes(4, "big") + body)
    try:
        frame = decoder.next_frame()
        return None if frame is None else m.decode(frame)
    except ProtocolError:
        return None


def check_round_trip(message, max_frame: int) -> None:
    """What we send must reach the peer as the same message."""
    from boxer.nat_traversal import messages as m
    from boxer.nat_traversal.wire import FrameDecoder, encode_frame

    data = encode_frame(message.to_wire(), max_frame)
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(data)
    again = m.decode(decoder.next_frame())
    if again != message:
        raise AssertionError(f"{message!r} decodes as {again!r}")


# -- targets ----------------------------------------------------------------------------------------

def decoder_target(data: bytes) -> None:
    import atheris

    from boxer.nat_traversal import messages as m
    from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME, MAX_FRAME, FrameDecoder, ProtocolError

    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    limit = MAX_FRAME if fdp.ConsumeBool() else MAX_DOWNSTREAM_FRAME
    if mode == 0:  # raw bytes, as framed by the peer itself
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    elif mode == 1:  # one well-framed body of any bytes
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        stream = len(body).to_bytes(4, "big") + body
    else:  # a message-shaped object
        wire = message_wire(fdp, sorted(m.MESSAGE_TYPES))
        try:
            body = json.dumps(wire).encode()
        except (ValueError, RecursionError):
            return
        stream = len(body).to_bytes(4, "big") + body
    decoder = FrameDecoder(limit)
    step = max(1, len(stream) // 3)
    try:
        for i in range(0, len(stream), step):  # in pieces, as reads arrive
            decoder.receive_data(stream[i:i + step])
            while (frame := decoder.next_frame()) is not None:
                message = m.decode(frame)
                check_round_trip(message, MAX_DOWNSTREAM_FRAME)
    except ProtocolError:
        pass


class _BrokerSession:
    def __init__(self) -> None:
        from boxer.nat_traversal.broker import Broker

        self.secret = b"f" * 32
        counter = iter(range(1, 10**9))
        self.broker = Broker(self.secret, prefix="100.64.0.0/24",
                             new_token=lambda: f"{next(counter):016x}")
        self.now = 0.0
        self.open: set[int] = set()
        self.challenges: dict[int, str] = {}

    def check(self, actions) -> None:
        from boxer.nat_traversal import messages as m
        from boxer.nat_traversal.broker import Send
        from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME

        for action in actions:
            if isinstance(action, Send):
                check_round_trip(action.message, MAX_DOWNSTREAM_FRAME)
                if isinstance(action.message, m.Challenge):
                    self.challenges[action.cid] = action.message.nonce


def broker_target(data: bytes) -> None:
    import atheris

    from boxer.nat_traversal import auth
    from boxer.nat_traversal import messages as m
    from boxer.nat_traversal.wire import MAX_FRAME

    fdp = atheris.FuzzedDataProvider(data)
    session = _BrokerSession()
    broker = session.broker
    types = sorted(m.MESSAGE_TYPES)
    for _ in range(fdp.ConsumeIntInRange(1, 40)):
        cid = fdp.ConsumeIntInRange(1, 4)
        op = fdp.ConsumeIntInRange(0, 9)
        if cid not in session.open or op == 0:
            if cid not in session.open:
                session.open.add(cid)
                session.check(broker.connection_made(cid, f"198.18.1.{cid}:{40000 + cid}", session.now))
            continue
        if op == 1 and cid in session.challenges:  # authenticate as an agent would
            nonce = f"{cid:08x}"
            session.check(broker.message_received(cid, m.Auth(
                v=m.PROTOCOL_VERSION, nonce=nonce,
                mac=auth.mac(session.secret, auth.AGENT_PROOF, session.challenges[cid], nonce)), session.now))
        elif op == 2:
            session.check(broker.connection_lost(cid))
            session.open.discard(cid)
            session.challenges.pop(cid, None)
        elif op == 3:
            session.now += fdp.ConsumeIntInRange(0, 20000) / 1000
            session.check(broker.expire(session.now))
        elif op == 4:
            session.check(broker.flush_members())
        elif op == 5:
            session.check(broker.protocol_error(cid, "fuzzed"))
        else:
            message = through_the_wire(message_wire(fdp, types), MAX_FRAME)
            if message is not None:
                session.check(broker.message_received(cid, message, session.now))


CONTROLLER_TYPES = ["snapshot", "instance_up", "instance_down", "instance_report", "instance_quiet", "demand",
                    "members", "members_delta", "pong", "error", "refused"]
_DEPLOYMENT = None


def controller_target(data: bytes) -> None:
    import atheris

    from boxer.controller.book import Book, Launch, Tell, actions_for
    from boxer.controller.policy import decide
    from boxer.controller.signals import ControllerState
    from boxer.nat_traversal import messages as m
    from boxer.nat_traversal.wire import MAX_DOWNSTREAM_FRAME

    fdp = atheris.FuzzedDataProvider(data)
    deployment = _deployment()
    book, state, now = Book(deployment), ControllerState(), 0.0
    ids = iter(f"{i:016x}" for i in range(1, 10**9))
    for _ in range(fdp.ConsumeIntInRange(1, 30)):
        pools = {"names": [r.name for r in book.records.values()],
                 "tokens": [r.agent_id for r in book.records.values()]}
        op = fdp.ConsumeIntInRange(0, 6)
        if op <= 2:
            message = through_the_wire(message_wire(fdp, CONTROLLER_TYPES, pools), MAX_DOWNSTREAM_FRAME)
            if message is not None:
                book.on_message(message, now)
        elif op == 3 and book.records:
            record = fdp.PickValueInList(list(book.records.values()))
            book.exited(record.id, fdp.PickValueInList([None, 0, 3, 137, -1]), now)
        elif op == 4:
            now += fdp.ConsumeIntInRange(0, 120000) / 1000
        else:
            outcome = decide(deployment, book.signals(now), state, now)
            state = outcome.state
            for action in actions_for(outcome.decisions, deployment, book, drain_grace=60.0, agent_ids=ids):
                if isinstance(action, Launch):
                    book.launched(action.start, action.agent_id, now)
                elif isinstance(action, Tell) and isinstance(action.message, m.Stop) and fdp.ConsumeBool():
                    book.forget(action.instance)
            for name in deployment.services:
                book.service_load(name)


def _deployment():
    global _DEPLOYMENT
    if _DEPLOYMENT is None:
        from boxer.controller.validate import parse_deployment

        _DEPLOYMENT = parse_deployment(
            "services:\n"
            "  web:\n    command: [web]\n    minInstances: 1\n    maxInstances: 4\n"
            "    autoscale: {target: 2}\n    hostnames: [web-1, web-2, web-3, web-4]\n"
            "  api:\n    command: [api]\n    minInstances: 0\n    maxInstances: 3\n"
            "    autoscale: {target: 1, metric: cpu}\n    restartBackoff: {initialDelaySeconds: 0.5}\n"
            "  kv:\n    command: [kv]\n    placement: vm\n    restartPolicy: on-failure\n", "fuzz.yaml")
    return _DEPLOYMENT


def ipc_target(data: bytes) -> None:
    from boxer.agent.ipc import SIZE, IpcError, Message

    # The first byte steers: bit 0 pads or cuts the rest to the message size, bit 1 puts the
    # real magic in front (or libFuzzer spends its time finding those two).
    steer, body = (data[0], data[1:]) if data else (0, b"")
    raw = body.ljust(SIZE, b"\0")[:SIZE] if steer & 1 else body
    if steer & 2 and len(raw) >= 4:
        raw = (0x42580001).to_bytes(4, sys.byteorder) + raw[4:]
    try:
        message = Message.unpack(raw)
    except IpcError:
        return
    again = Message.unpack(message.pack())
    if again != message:
        raise AssertionError(f"{message!r} repacks as {again!r}")


# The vm host protocol's messages and their fields (protocol.py's docstring).
VMHOST_MESSAGES = {"hello": ["v", "nonce", "host", "slots"], "auth": ["v", "nonce", "proof"],
                   "welcome": ["proof", "running", "exits"], "refused": ["reason"], "start": ["ref", "event"],
                   "started": ["ref", "pid"], "start_failed": ["ref", "reason"], "stop": ["ref", "grace"],
                   "exited": ["ref", "status", "reason"], "ping": [], "pong": ["running"],
                   "logs": ["id", "ref", "offset"], "log": ["id", "offset", "data", "at", "size", "running", "end"],
                   "log_failed": ["id", "reason"]}
VMHOST_TOKEN = bytes(range(32))
_EVENT = {"version": 2, "name": "kv-1", "service": "kv", "index": 1, "command": ["redis-server"],
          "coordinator": "198.18.1.1:7000", "instance": "9f0c2e4a1b3d5e7f", "token": "ab" * 32,
          "env": {"A": "b"}, "lifetime": 840.0}


def vmhost_wire(fdp) -> dict:
    """A vm host message: a kind, its fields (some missing, odd or well-formed), maybe extra."""
    kind = fdp.PickValueInList([*VMHOST_MESSAGES, "x", ""])
    wire: dict = {"t": kind if fdp.ConsumeIntInRange(0, 15) else value(fdp)}
    for name in VMHOST_MESSAGES.get(kind, []):
        if fdp.ConsumeIntInRange(0, 7) == 0:
            continue
        if name == "v" and fdp.ConsumeBool():
            wire[name] = 1
        elif name == "event" and fdp.ConsumeBool():
            event = dict(_EVENT)
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                event[fdp.PickValueInList([*_EVENT, "secret", "x"])] = value(fdp, 1)
            wire[name] = event
        elif name == "data" and fdp.ConsumeBool():  # base64, of any bytes, maybe one past a chunk
            import base64

            wire[name] = base64.b64encode(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 49153))).decode()
        elif name in ("running", "exits") and kind != "log" and fdp.ConsumeBool():
            wire[name] = [{"ref": value(fdp, 2), "pid": value(fdp, 2), "status": value(fdp, 2),
                           "reason": value(fdp, 2)} for _ in range(fdp.ConsumeIntInRange(0, 3))]
        else:
            wire[name] = value(fdp)
    if fdp.ConsumeIntInRange(0, 15) == 0:
        wire[fdp.PickValueInList(["x", "t2", "v"])] = value(fdp)
    return wire


def vmhost_stream(fdp) -> bytes:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:  # raw bytes, framed by the peer itself (a length prefix of its choosing)
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    if mode == 1:  # one well-framed body of any bytes
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    else:
        try:
            body = json.dumps(vmhost_wire(fdp)).encode()
        except (ValueError, RecursionError):
            return b""
    return len(body).to_bytes(4, "big") + body


def _vmhost_pair(fdp, depth: int | None = None):
    from boxer.backends.vmhost import protocol

    server = protocol.ServerSession(VMHOST_TOKEN, "p1", 2, nonce="a" * 32)
    client = protocol.ClientSession(VMHOST_TOKEN, nonce="b" * 32)
    if depth is None:  # 0: fresh, 1: the client past hello, 2: both past the handshake
        depth = fdp.ConsumeIntInRange(0, 2)
    if depth >= 1:
        client.receive(server.data_to_send())
    if depth == 2:
        assert server.receive(client.data_to_send()) == ["authenticated"]
        server.welcome({"old.1": 42}, [])
        (welcome,) = client.receive(server.data_to_send())
        assert client.ready and welcome.running == {"old.1": 42}
    return server, client


def vmhost_target(data: bytes) -> None:
    import atheris

    from boxer.backends.aws_lambda.event import LambdaEvent
    from boxer.backends.errors import EventError
    from boxer.backends.vmhost import protocol
    from boxer.nat_traversal.wire import ProtocolError

    fdp = atheris.FuzzedDataProvider(data)
    server, client = _vmhost_pair(fdp)
    to_server = fdp.ConsumeBool()
    stream = b"".join(vmhost_stream(fdp) for _ in range(fdp.ConsumeIntInRange(1, 4)))
    step = max(1, len(stream) // fdp.ConsumeIntInRange(1, 5))
    try:
        for i in range(0, len(stream), step):  # in pieces, as reads arrive
            for event in (server if to_server else client).receive(stream[i:i + step]):
                if isinstance(event, protocol.StartRequested):
                    try:
                        LambdaEvent.from_dict(event.event)
                    except EventError:
                        pass
                elif isinstance(event, protocol.LogChunk) and len(event.data) > protocol.LOG_CHUNK:
                    raise AssertionError(f"a log chunk of {len(event.data)} bytes was accepted")
    except ProtocolError:
        pass
    server.data_to_send()  # whatever it queued (a refusal) encodes
    if server.authenticated and client.ready and not to_server:
        fresh_server, fresh_client = _vmhost_pair(fdp, depth=2)
        chunk = protocol.LogChunk(fdp.ConsumeIntInRange(0, 2**31), fdp.ConsumeIntInRange(0, 2**53),
                                  fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, protocol.LOG_CHUNK)),
                                  round(fdp.ConsumeFloatInRange(0, 1e10), 3), fdp.ConsumeIntInRange(0, 2**53),
                                  fdp.ConsumeBool(), fdp.ConsumeBool())
        fresh_server.log(chunk)
        got = fresh_client.receive(fresh_server.data_to_send())
        if got != [chunk]:
            raise AssertionError(f"a log chunk arrived as {got!r}")


def handshake_target(data: bytes) -> None:
    """Two connections: the first's frames are captured, the second is attacked with them."""
    import atheris

    from boxer.backends.vmhost import protocol
    from boxer.nat_traversal.wire import ProtocolError

    fdp = atheris.FuzzedDataProvider(data)
    client_token = VMHOST_TOKEN if fdp.ConsumeBool() else bytes(32)
    captured: list[bytes] = []
    first_server = protocol.ServerSession(VMHOST_TOKEN, "p1", 1)
    first_client = protocol.ClientSession(VMHOST_TOKEN)
    first_client.receive(first_server.data_to_send())
    captured.append(first_client.data_to_send())  # a good auth, for another connection's nonce
    first_server.receive(captured[0])
    first_server.welcome({}, [])
    captured.append(first_server.data_to_send())  # a good welcome, ditto

    server = protocol.ServerSession(VMHOST_TOKEN, "p1", 1)
    client = protocol.ClientSession(client_token)
    pipes = {"s2c": bytearray(server.data_to_send()), "c2s": bytearray()}
    alive = {"server": True, "client": True}

    def feed(end: str, data: bytes) -> None:
        if not alive[end] or not data:
            return
        session = server if end == "server" else client
        try:
            session.receive(data)
        except ProtocolError:
            alive[end] = False  # the shell closes the connection
        pipes["s2c" if end == "server" else "c2s"] += session.data_to_send()

    for _ in range(fdp.ConsumeIntInRange(1, 12)):
        op = fdp.ConsumeIntInRange(0, 5)
        direction = fdp.PickValueInList(["s2c", "c2s"])
        end = "client" if direction == "s2c" else "server"
        if op <= 1:  # deliver some of what is in flight
            count = fdp.ConsumeIntInRange(0, len(pipes[direction]))
            chunk = bytes(pipes[direction][:count])
            del pipes[direction][:count]
            feed(end, chunk)
        elif op == 2:  # the attacker drops some
            del pipes[direction][:fdp.ConsumeIntInRange(0, len(pipes[direction]))]
        elif op == 3:  # ... or replays a captured frame
            feed(end, fdp.PickValueInList(captured))
        else:  # ... or injects its own
            feed(end, vmhost_stream(fdp))
        if server.authenticated and client_token != VMHOST_TOKEN:
            raise AssertionError("the daemon authenticated a controller without the host token")
        if client.ready and not server.authenticated:
            raise AssertionError("the controller trusts a daemon that never checked its proof")
    feed("client", bytes(pipes["s2c"]))
    feed("server", bytes(pipes["c2s"]))
    if client_token == VMHOST_TOKEN and alive["server"] and alive["client"] and not pipes["s2c"] and \
            server.authenticated and fdp.ConsumeBool():
        server.welcome({}, [])
        feed("client", server.data_to_send())


# -- running ------------------------------------------------------------------------------------------

def run_one(target: str, runs: int, extra: list[str]) -> None:
    """In this process: fuzz `target` for `runs` inputs (atheris exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["boxer"]):
        import boxer.agent.ipc
        import boxer.backends.aws_lambda.event
        import boxer.backends.vmhost.protocol
        import boxer.controller.book
        import boxer.controller.policy
        import boxer.nat_traversal.broker
        import boxer.nat_traversal.messages
        import boxer.nat_traversal.wire  # noqa: F401
    func = {"decoder": decoder_target, "broker": broker_target, "controller": controller_target,
            "ipc": ipc_target, "vmhost": vmhost_target, "handshake": handshake_target}[target]
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=70000", "-rss_limit_mb=4096", *extra], func)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=[*TARGETS, []], default=[])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--report", help="write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.child:
        run_one(args.child, args.runs, extra)
        return
    rows = []
    for target in args.targets or TARGETS:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, __file__, "--child", target, "--runs", str(args.runs), *extra],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        seconds = time.monotonic() - started
        log = proc.stderr
        done = re.findall(r"Done (\d+) runs", log)
        cov = re.findall(r"cov: (\d+)", log)
        crash = re.search(r"Test unit written to (\S+)", log)
        row = {"target": target, "runs": int(done[-1]) if done else None, "seconds": round(seconds, 1),
               "coverage": int(cov[-1]) if cov else None, "exit_status": proc.returncode,
               "finding": crash.group(1) if crash else None}
        if proc.returncode != 0:
            row["error"] = "\n".join(line for line in log.splitlines()[-40:])
        rows.append(row)
        print(f"{target:<11} {row['runs'] or 0:>9} runs  {seconds:7.1f} s  cov {row['coverage']}  "
              f"{'FOUND ' + str(row['finding']) if row['finding'] else ('ok' if proc.returncode == 0 else 'FAILED')}",
              flush=True)
        if proc.returncode != 0:
            print(row["error"], file=sys.stderr)
    if args.report:
        with open(args.report, "w") as out:
            json.dump(rows, out, indent=1)
    sys.exit(0 if all(r["exit_status"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()

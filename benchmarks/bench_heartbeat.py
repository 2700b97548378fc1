"""What heartbeats cost the coordinator, for 1000 instances beating every 0.2 s (5000 beats/s).

1. per beat, in process: the full path (frame decoder, JSON, the strict message decoder, the
   broker) against the fast path the coordinator takes for the exact encoded beat (a bytes
   comparison, then the broker), and the broker's quiet scan over 1000 instances (every 0.1 s);
2. with root: a real coordinator in a lab, 1000 authenticated control sessions from one lab
   host; the coordinator's CPU (from /proc) over 10 s with the sessions idle, then beating.

Prints a table and writes benchmarks/results/heartbeat.json.

    python benchmarks/bench_heartbeat.py [--sessions 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boxer.nat_traversal import auth
from boxer.nat_traversal import messages as m
from boxer.nat_traversal.broker import Broker
from boxer.nat_traversal.coordinator import _BEAT, BEAT_FRAME
from boxer.nat_traversal.wire import FrameDecoder

RESULTS = ROOT / "benchmarks" / "results" / "heartbeat.json"
SECRET = bytes(range(32))
BEAT_EVERY = 0.2


def _broker_with(n: int) -> Broker:
    counter = iter(range(1, 10**9))
    broker = Broker(SECRET, prefix="100.64.0.0/16", new_token=lambda: f"{next(counter):032x}")
    for cid in range(1, n + 1):
        challenge = broker.connection_made(cid, f"198.18.1.1:{10000 + cid}")[0].message
        nonce = "ab" * 16
        broker.message_received(cid, m.Auth(v=m.PROTOCOL_VERSION, nonce=nonce, mac=auth.mac(
            SECRET, auth.AGENT_PROOF, challenge.nonce, nonce)), 0.0)
        broker.message_received(cid, m.Register(name=f"b{cid}", service="b", instance=f"{cid:08x}"), 0.0)
    return broker


def in_process(n: int, rounds: int = 20) -> dict:
    broker = _broker_with(n)
    decoders = {cid: FrameDecoder() for cid in range(1, n + 1)}
    now = 1.0

    def full() -> None:
        for cid, decoder in decoders.items():
            decoder.receive_data(BEAT_FRAME)
            while (frame := decoder.next_frame()) is not None:
                broker.message_received(cid, m.decode(frame), now)

    def fast() -> None:
        for cid, decoder in decoders.items():
            data = BEAT_FRAME
            if data == BEAT_FRAME and not decoder.buffered:
                broker.message_received(cid, _BEAT, now)

    def best(fn) -> float:
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return min(times)

    full_s, fast_s = best(full), best(fast)
    scans = []
    for i in range(rounds):  # everyone heard from at `now`: the scan finds nobody quiet
        began = time.perf_counter()
        broker.expire(now + i * 0.01)
        scans.append(time.perf_counter() - began)
    scan_s = min(scans)
    beats_per_s = n / BEAT_EVERY
    return {
        "instances": n,
        "full_path_us_per_beat": round(full_s / n * 1e6, 2),
        "fast_path_us_per_beat": round(fast_s / n * 1e6, 2),
        "quiet_scan_ms": round(scan_s * 1e3, 3),
        "cpu_share_full_path": round(full_s / n * beats_per_s + scan_s * 10, 4),
        "cpu_share_fast_path": round(fast_s / n * beats_per_s + scan_s * 10, 4),
    }


# --- the real coordinator --------------------------------------------------------------------------

async def _generate(coordinator: str, secret_file: str, sessions: int, seconds: float) -> None:
    """Inside a lab host: open `sessions` authenticated control sessions, stay idle for `seconds`,
    then beat every 0.2 s for `seconds`. Prints a line at each phase change (the parent measures).

    The sessions authenticate but do not register: a beat takes the same path through the
    coordinator either way (the quiet scan over instances is measured in process), and 1000
    registrations would each push the whole membership to every instance, ~9 GB of Members
    frames in all, which is another benchmark."""
    import resource

    from boxer.agent.control import FramedSocket, _authenticate, _connect
    from boxer.nat_traversal.auth import Credential, load_secret

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = coordinator.rpartition(":")
    secret = load_secret(secret_file, None)

    async def open_one() -> FramedSocket:
        framed = FramedSocket(await _connect((host, int(port)), False, 30))
        await _authenticate(framed, Credential.controller(secret), coordinator)
        return framed

    opened: list[FramedSocket] = []
    for start in range(0, sessions, 50):
        opened += await asyncio.gather(*(open_one() for _ in range(start, min(sessions, start + 50))))
    loop = asyncio.get_running_loop()
    print("connected", flush=True)
    await asyncio.sleep(seconds)
    print("beating", flush=True)

    async def beat(framed: FramedSocket, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            await framed.send_frame(BEAT_FRAME)
            await asyncio.sleep(BEAT_EVERY)

    beaters = [loop.create_task(beat(f, i * BEAT_EVERY / len(opened))) for i, f in enumerate(opened)]
    await asyncio.sleep(seconds + BEAT_EVERY)
    print("done", flush=True)
    for task in beaters:
        task.cancel()
    for framed in opened:
        framed.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def real_coordinator(sessions: int, seconds: float) -> dict:
    from boxer.lab import lab_down, lab_up

    name = f"hb{os.getpid() % 100000}"
    lab = lab_up(name, 1)
    try:
        pid = lab.processes[0].pid
        gen = lab.popen("h1", [sys.executable, __file__, "--generate", str(sessions), "--seconds", str(seconds)],
                        stdout=subprocess.PIPE, text=True)
        assert gen.stdout is not None
        marks = {}
        for line in gen.stdout:
            marks[line.strip()] = (time.monotonic(), _cpu_seconds(pid))
            if line.strip() == "done":
                break
        gen.wait(30)
        (t0, c0), (t1, c1), (t2, c2) = marks["connected"], marks["beating"], marks["done"]
        return {"sessions": sessions, "seconds": seconds,
                "coordinator_cpu_idle_sessions": round((c1 - c0) / (t1 - t0), 4),
                "coordinator_cpu_beating": round((c2 - c1) / (t2 - t1), 4)}
    finally:
        lab_down(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        from boxer import _aio

        _aio.run(_generate(os.environ["BOXER_COORDINATOR"], os.environ["BOXER_SECRET_FILE"],
                           args.generate, args.seconds))
        return 0
    logging.disable(logging.WARNING)  # the broker logs every registration
    results = {"in_process": in_process(args.sessions), "machine": {
        "python": platform.python_version(), "cpus": os.cpu_count()}}
    if os.geteuid() == 0:
        results["real_coordinator"] = real_coordinator(args.sessions, args.seconds)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    ip = results["in_process"]
    print(f"{'heartbeats at the coordinator, ' + str(ip['instances']) + ' instances, 1 beat / 0.2 s':<58}")
    print(f"  {'full path (decoder + JSON + decode + broker) per beat':<56} {ip['full_path_us_per_beat']:>7.2f} us")
    print(f"  {'fast path (bytes compare + broker) per beat':<56} {ip['fast_path_us_per_beat']:>7.2f} us")
    print(f"  {'quiet scan of all instances (every 0.1 s)':<56} {ip['quiet_scan_ms']:>7.3f} ms")
    print(f"  {'share of one core, full path':<56} {ip['cpu_share_full_path'] * 100:>6.1f} %")
    print(f"  {'share of one core, fast path':<56} {ip['cpu_share_fast_path'] * 100:>6.1f} %")
    if "real_coordinator" in results:
        rc = results["real_coordinator"]
        print(f"  real coordinator, {rc['sessions']} sessions, {rc['seconds']:g} s each (share of one core, /proc):")
        print(f"  {'  sessions idle':<56} {rc['coordinator_cpu_idle_sessions'] * 100:>6.1f} %")
        print(f"  {'  sessions beating':<56} {rc['coordinator_cpu_beating'] * 100:>6.1f} %")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

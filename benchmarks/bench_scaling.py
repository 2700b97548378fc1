"""Scaling in the lab, measured with `boxer up` (needs root). Prints a table and writes
benchmarks/results/scaling.json.

1. scale from zero: a connect to a service with no instance -> the connect answered (curl's
   own time, the client already running under boxer), and controller start -> ready;
2. add 12 instances: a running deployment of one instance gets `minInstances: 13` (`boxer up`
   again with the edited file) - from the controller's start decisions to all 12 new ones
   listening (as reported to the coordinator), side by side with the same 12 processes started
   bare in 12 lab hosts (no agent, no coordinator) until each listens; and the same 12 in a
   deployment brought up cold (`minInstances: 12`: its agent zygote is still starting);
2b. load step: one instance at its target (2 open connections per instance) for 3 s, then 6:
   from the client's sixth connect to the controller's decision and to the new instance
   listening (panicWindowSeconds 1: how soon a policy lets a step count is the user's choice);
3. kill -> replacement serving: SIGKILL an instance's app -> its replacement listening;
4. silent agent: SIGSTOP an instance's agent -> the controller's decision, and its replacement
   listening (the coordinator reports an agent quiet once its heartbeats stop);
5. decide() at 1000 simulated instances (benchmarks/bench_controller.py).

    python benchmarks/bench_scaling.py
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boxer.controller.paths import DeployPaths, read_json

BOXER = [sys.executable, "-m", "boxer"]
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
SERVER = [sys.executable, "-m", "http.server", "8080"]

DEPLOY = """
name: {name}
services:
  api:
    command: ["{python}", -m, http.server, "8080"]  # the baseline's interpreter, not a PATH shim
    placement: function
    minInstances: {min}
    maxInstances: {max}
    {autoscale}
"""
AUTOSCALE = "autoscale: {target: 5, scaleToZeroGracePeriodSeconds: 600}"
STEP_AUTOSCALE = ("autoscale: {metric: activeConnections, target: 2, stableWindowSeconds: 20, "
                  "panicWindowSeconds: 1, scaleToZeroGracePeriodSeconds: 600}")
# The load: 2 connections to the service held open, 3 s later 4 more; prints the time of the
# step (the last connect made).
HOLD = ("import json,socket,time;c=lambda n:[socket.create_connection(('api',8080),timeout=10) "
        "for _ in range(n)];a=c(2);time.sleep(3);b=c(4);"
        "print(json.dumps(time.time()),flush=True);time.sleep(60)")


def up(name: str, folder: Path, minimum: int, maximum: int, autoscale: bool | str) -> None:
    """`boxer up` (again, on a running deployment: applies the new counts). `autoscale`: the
    default block, none, or the block's text."""
    block = autoscale if isinstance(autoscale, str) else AUTOSCALE if autoscale else ""
    (folder / "deploy.yaml").write_text(DEPLOY.format(
        name=name, python=sys.executable, min=minimum, max=maximum, autoscale=block))
    subprocess.run([*BOXER, "up", "--detach", str(folder / "deploy.yaml")], check=True,
                   capture_output=True, timeout=120)


def down(name: str) -> None:
    """`boxer down`, and the deployment's files too (kept by down for `boxer report`; the
    figures a benchmark wants are in its JSON)."""
    import shutil

    subprocess.run([*BOXER, "down", "--name", name], capture_output=True, timeout=60)
    shutil.rmtree(DeployPaths(name).root, ignore_errors=True)


def timeline(name: str) -> list[dict]:
    rows = []
    for line in DeployPaths(name).timeline.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def status(name: str) -> dict:
    return read_json(DeployPaths(name).status) or {}


def wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("benchmark condition not reached")


def lab_of(name: str) -> tuple[str, str]:
    lab = read_json(DeployPaths(name).deployment)["lab"]
    hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
    return lab, f"h{hosts}"


def bench_scale_from_zero(folder: Path) -> dict:
    name = "bsz"
    up(name, folder, 0, 4, True)
    try:
        lab, client = lab_of(name)
        script = ("import subprocess,time,json;t=time.time();"
                  "r=subprocess.run(['curl','-sS','-o','/dev/null','-w','%{http_code} %{time_total}',"
                  "'--max-time','15','http://api:8080/'],capture_output=True,text=True);"
                  "print(json.dumps([t,r.stdout]))")
        out = subprocess.run([*BOXER, "lab", "exec", "--name", lab, client, "--", *BOXER, "run",
                              "--name", "bcli", "--", sys.executable, "-c", script],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        began, curl = json.loads(out.strip().splitlines()[-1])
        code, total = curl.split()
        # The controller writes the instance's ready time at its next tick.
        rows = wait(lambda: (rs := timeline(name)) and any(r["ready_latencies"] for r in rs)
                    and rs, 10)
        start_t = next(r["t"] for r in rows for d in r["decisions"] if d["kind"] == "start")
        ready = next((r["t"], lat) for r in rows for n, lat in r["ready_latencies"])
        return {"http_status": int(code), "connect_to_answer_s": float(total),
                "demand_to_start_decision_s": round(start_t - began, 3),
                "start_to_listening_reported_s": ready[1]}
    finally:
        down(name)


def ready_count(name: str) -> int:
    return sum(1 for i in status(name).get("instances", []) if i["state"] == "ready")


def twelve_ready(rows: list[dict], since: float, before: int) -> dict:
    """From the first start decision after `since` to `before` + 12 instances listening."""
    first = next(r["t"] for r in rows if r["t"] >= since
                 and any(d["kind"] == "start" for d in r["decisions"]))
    all_ready = next(r["t"] for r in rows if r["t"] >= first
                     and r["services"]["api"]["ready"]["function"] >= before + 12)
    lats = sorted(lat for r in rows if r["t"] >= first for _, lat in r["ready_latencies"])
    return {"all_12_listening_s": round(all_ready - first, 3), "fastest_s": lats[0],
            "slowest_s": lats[-1]}


def bench_add_12(folder: Path) -> dict:
    name = "b12"
    up(name, folder, 1, 13, True)  # autoscaled (no load comes): room for 13
    try:
        wait(lambda: ready_count(name) >= 1, 60)
        edited = time.time()
        up(name, folder, 13, 13, True)  # applied to the running deployment
        wait(lambda: ready_count(name) >= 13, 60)
        running = twelve_ready(timeline(name), edited, 1)
    finally:
        down(name)
    name = "b12c"
    began = time.time()
    up(name, folder, 12, 12, False)
    try:
        wait(lambda: ready_count(name) >= 12, 60)
        cold = twelve_ready(timeline(name), began, 0)
    finally:
        down(name)
    return {"boxer": running, "boxer_cold_up": cold, "bare": bench_bare_12()}


def bench_load_step(folder: Path) -> dict:
    name = "bls"
    up(name, folder, 1, 3, STEP_AUTOSCALE)
    client = None
    try:
        wait(lambda: ready_count(name) >= 1, 60)
        lab, host = lab_of(name)
        client = subprocess.Popen([*BOXER, "lab", "exec", "--name", lab, host, "--", *BOXER, "run",
                                   "--name", "bls-load", "--", sys.executable, "-c", HOLD],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert client.stdout is not None
        step = json.loads(client.stdout.readline())
        wait(lambda: ready_count(name) >= 2, 30)
        rows = wait(lambda: (rs := timeline(name)) and any(
            r["ready_latencies"] for r in rs if r["t"] >= step) and rs, 10)
        decided = next(r["t"] for r in rows if r["t"] >= step
                       and any(d["kind"] == "start" for d in r["decisions"]))
        ready = next(r["t"] for r in rows if r["t"] >= step and r["ready_latencies"])
        return {"step_to_decision_s": round(decided - step, 3),
                "step_to_new_instance_listening_s": round(ready - step, 3)}
    finally:
        if client is not None:
            client.terminate()
            client.wait(10)
        down(name)


def bench_bare_12() -> dict:
    """The same 12 servers started directly in 12 lab hosts: no agent, no coordinator."""
    from boxer.lab import lab_down, lab_up

    lab = lab_up("bbare", 12)
    procs = []
    try:
        began = time.monotonic()
        for host in lab.hosts:
            procs.append(lab.popen(host.name, SERVER, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL))
        pending = {h.name for h in lab.hosts}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for host in list(pending):
                probe = lab.run(host, ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"],
                                capture_output=True)
                if probe.returncode == 0:
                    pending.discard(host)
        if pending:
            raise TimeoutError(f"bare servers in {sorted(pending)} never listened")
        return {"all_12_listening_s": round(time.monotonic() - began, 3)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        lab_down("bbare")


def bench_replace(folder: Path) -> dict:
    name = "brp"
    up(name, folder, 1, 1, False)
    try:
        old = wait(lambda: next((i for i in status(name).get("instances", [])
                                 if i["state"] == "ready"), None), 30)
        app = subprocess.run(["pgrep", "-P", str(old["pid"])], capture_output=True,
                             text=True).stdout.split()[0]
        killed = time.time()
        os.kill(int(app), signal.SIGKILL)
        wait(lambda: next((i for i in status(name).get("instances", [])
                           if i["state"] == "ready" and i["instance_id"] != old["instance_id"]),
                          None), 30)
        rows = wait(lambda: (rs := timeline(name)) and any(
            r["ready_latencies"] for r in rs if r["t"] >= killed) and rs, 10)
        detected = next(r["t"] for r in rows if r["t"] >= killed and any(
            d["kind"] == "stop" for d in r["decisions"]))
        ready = next(r["t"] for r in rows if r["t"] >= killed and r["ready_latencies"])
        return {"kill_to_detected_s": round(detected - killed, 3),
                "kill_to_replacement_listening_s": round(ready - killed, 3)}
    finally:
        down(name)


def bench_silent(folder: Path) -> dict:
    name = "bsi"
    up(name, folder, 1, 1, False)
    try:
        old = wait(lambda: next((i for i in status(name).get("instances", [])
                                 if i["state"] == "ready"), None), 30)
        stopped = time.time()
        os.kill(old["pid"], signal.SIGSTOP)  # the agent; its app runs on
        try:
            wait(lambda: next((i for i in status(name).get("instances", [])
                               if i["state"] == "ready" and i["instance_id"] != old["instance_id"]),
                              None), 30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old["pid"], signal.SIGCONT)
        rows = wait(lambda: (rs := timeline(name)) and any(
            r["ready_latencies"] for r in rs if r["t"] >= stopped) and rs, 10)
        detected = next(r["t"] for r in rows if r["t"] >= stopped and any(
            d["kind"] == "stop" for d in r["decisions"]))
        ready = next(r["t"] for r in rows if r["t"] >= stopped and r["ready_latencies"])
        return {"stop_to_decision_s": round(detected - stopped, 3),
                "stop_to_replacement_listening_s": round(ready - stopped, 3)}
    finally:
        down(name)


def bench_decide() -> dict:
    import bench_controller

    return {str(size): bench_controller.measure(size, 20) for size in (1000,)}


def main() -> int:
    if os.geteuid() != 0:
        print("bench_scaling needs root (the lab)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "scale_from_zero": bench_scale_from_zero(folder),
            "load_step": bench_load_step(folder),
            "add_12": bench_add_12(folder),
            "replace_after_kill": bench_replace(folder),
            "silent_agent": bench_silent(folder),
            "decide_1000": bench_decide(),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "note": "'listening' = the agent's report that the app listens, which is when the "
                    "coordinator routes connections to it; agents report once a second, and "
                    "beat every 0.2 s",
        }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    sz, a12, rp = results["scale_from_zero"], results["add_12"], results["replace_after_kill"]
    si = results["silent_agent"]
    print(f"{'measure':<48} {'boxer':>9} {'bare':>9} {'target':>7}")
    print(f"{'scale from zero: connect -> answered (s)':<48} "
          f"{sz['connect_to_answer_s']:>9.3f} {'-':>9} {'':>7}")
    print(f"{'  of which start -> listening reported (s)':<48} "
          f"{sz['start_to_listening_reported_s']:>9.3f} {'-':>9} {'1.0':>7}")
    ls = results["load_step"]
    print(f"{'load step -> controller decides (s)':<48} "
          f"{ls['step_to_decision_s']:>9.3f} {'-':>9} {'':>7}")
    print(f"{'load step -> new instance listening (s)':<48} "
          f"{ls['step_to_new_instance_listening_s']:>9.3f} {'-':>9} {'1.0':>7}")
    print(f"{'add 12 instances, all listening (s)':<48} "
          f"{a12['boxer']['all_12_listening_s']:>9.3f} {a12['bare']['all_12_listening_s']:>9.3f}"
          f" {'1.5':>7}")
    print(f"{'  the same 12 at a cold `boxer up` (s)':<48} "
          f"{a12['boxer_cold_up']['all_12_listening_s']:>9.3f} {'-':>9} {'':>7}")
    print(f"{'kill -> replacement listening (s)':<48} "
          f"{rp['kill_to_replacement_listening_s']:>9.3f} {'-':>9} {'2.0':>7}")
    print(f"{'agent stopped -> replacement decided (s)':<48} "
          f"{si['stop_to_decision_s']:>9.3f} {'-':>9} {'1.0':>7}")
    print(f"{'agent stopped -> replacement listening (s)':<48} "
          f"{si['stop_to_replacement_listening_s']:>9.3f} {'-':>9} {'':>7}")
    print(f"{'decide() at 1000 instances':<48} {json.dumps(results['decide_1000']['1000'])}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

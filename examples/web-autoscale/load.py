"""Step wrk load up and down against the example's nginx, and record what the clients saw.

    boxer up --detach examples/web-autoscale/deploy.yaml
    python examples/web-autoscale/load.py --steps 0,10,40,80,40,10,0 --step-seconds 20
    boxer report -o web-autoscale.png          # load, instances per placement, latency
    boxer down

wrk runs under `boxer run` inside the lab's client host (the last NATed host, which the
deployment never uses), so it reaches nginx by its service name `web`, through the NAT like any
overlay client. Each step appends one JSON line to /run/boxer/deploy/<name>/load.jsonl:
{t, connections, rps, p50_ms, p99_ms, errors} - `boxer report` plots it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from boxer.controller.paths import DeployPaths, read_json

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_wrk(out: str) -> dict[str, float | None]:
    """rps, p50 and p99 (ms) and errors from `wrk --latency` output."""
    result: dict[str, float | None] = {"rps": None, "p50_ms": None, "p99_ms": None, "errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            result["p50_ms" if parts[0] == "50%" else "p99_ms"] = _ms(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line:
            result["errors"] = (result["errors"] or 0) + sum(int(n) for n in re.findall(r"\d+", line))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="web-autoscale", help="deployment name")
    parser.add_argument("--steps", default="0,10,40,80,40,10,0",
                        help="open connections per step (0 = pause)")
    parser.add_argument("--step-seconds", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("load.py needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    paths = DeployPaths(args.name)
    info = read_json(paths.deployment)
    if not info or not info.get("controller_pid"):
        print(f"deployment {args.name} is not up: boxer up --detach deploy.yaml", file=sys.stderr)
        return 2
    lab = info["lab"]
    hosts = int(read_json(Path(f"/run/boxer/lab/{lab}/lab.json"))["host_count"])
    client = f"h{hosts}"
    out_file = paths.root / "load.jsonl"
    for step in (int(s) for s in args.steps.split(",")):
        began = time.time()
        line: dict = {"t": began, "connections": step}
        if step == 0:
            time.sleep(args.step_seconds)
        else:
            proc = subprocess.run(
                [sys.executable, "-m", "boxer", "lab", "exec", "--name", lab, client, "--",
                 sys.executable, "-m", "boxer", "run", "--name", "loadgen", "--",
                 "wrk", "--latency", "-t", str(min(4, step)), "-c", str(step),
                 "-d", f"{args.step_seconds}s", "--timeout", "20s", "http://web:80/"],
                capture_output=True, text=True, timeout=args.step_seconds + 60,
            )
            line.update(parse_wrk(proc.stdout))
            if proc.returncode != 0:
                line["error"] = proc.stderr.strip()[-300:]
        with open(out_file, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line))
        # The end of the step too, so the plot shows a step, not a ramp.
        with open(out_file, "a") as f:
            f.write(json.dumps({"t": time.time(), "connections": step}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

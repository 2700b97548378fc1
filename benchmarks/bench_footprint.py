"""What an instance carries: the installed size of an environment with boxer's default
dependencies (what `pip install boxer` brings, without extras), the agent's import time, and
what importing grpc (the control API) costs the CLI commands that use it.

Each environment is a venv given on the command line (made by `python -m venv V && V/bin/pip
install SRC`): typically one from the commit before the extras, one from now, side by side.
Import times are the cumulative `-X importtime` figure of the entry module, min and median of
--runs fresh interpreters (the machine is shared: the min is the steadier figure).

Prints a table and writes benchmarks/results/footprint.json.

    python benchmarks/bench_footprint.py before=/tmp/venv-before after=/tmp/venv-after [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "footprint.json"
# What `boxer run` imports to start an instance (the agent), and what `boxer status` adds.
AGENT = ("boxer.agent.runner", "import boxer.cli, boxer.cli.run, boxer.agent.runner")
CONTROL_CLIENT = ("boxer.controller.api.client", "import boxer.controller.api.client")


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"{venv}: no lib/python3*/site-packages (not a venv?)")
    return found[0]


def size_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 2**20


def import_ms(python: Path, module: str, code: str, runs: int) -> tuple[float, float] | None:
    samples = []
    for _ in range(runs):
        out = subprocess.run([str(python), "-X", "importtime", "-c", code], capture_output=True,
                             text=True, cwd="/", check=False)
        if out.returncode != 0:
            return None  # not importable there (e.g. no grpc in an agent-only environment)
        for line in out.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                samples.append(int(parts[1]) / 1000)
    return (min(samples), statistics.median(samples)) if samples else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("envs", nargs="+", metavar="LABEL=VENV")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for item in args.envs:
        label, _, venv = item.partition("=")
        venv_path = Path(venv)
        python = venv_path / "bin" / "python"
        packages = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                                  text=True, check=True)
        rows.append({
            "env": label,
            "site_packages_mb": round(size_mb(site_packages(venv_path)), 1),
            "distributions": len(json.loads(packages.stdout)),
            "agent_import_ms": import_ms(python, *AGENT, args.runs),
            "control_client_import_ms": import_ms(python, *CONTROL_CLIENT, args.runs),
        })
    print(f"{'env':<10} {'site-packages':>14} {'dists':>6} {'agent import min/med':>22} "
          f"{'control client min/med':>24}")
    for row in rows:
        agent, client = row["agent_import_ms"], row["control_client_import_ms"]
        print(f"{row['env']:<10} {row['site_packages_mb']:>11.1f} MB {row['distributions']:>6} "
              f"{(f'{agent[0]:.0f} / {agent[1]:.0f} ms' if agent else '-'):>22} "
              f"{(f'{client[0]:.0f} / {client[1]:.0f} ms' if client else 'not installed'):>24}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"python": sys.version.split()[0], "runs": args.runs, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Helpers the benchmark scripts share: percentiles, stopping what they started, writing results."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    from boxer.lab import stop_processes

    stop_processes(procs, grace)


def write_results(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")

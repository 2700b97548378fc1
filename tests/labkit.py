"""Small helpers shared by the lab tests that run programs under `boxer run`."""

from __future__ import annotations

import subprocess
import sys

BOXER = [sys.executable, "-m", "boxer"]


def boxer_run(name: str, *argv: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The argv of `boxer run --name NAME [extra] -- argv...`."""
    return [*BOXER, "run", "--name", name, *extra, "--", *argv]


def stop_all(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate every process a test started (those still running), then kill stragglers."""
    from boxer.lab import stop_processes

    stop_processes(procs, grace)

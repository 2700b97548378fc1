"""scripts/fuzz.py runs each of its targets (a short smoke run: the million-case run is the
script's own, `python scripts/fuzz.py`) and finds nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def test_every_fuzz_target_runs_and_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install -e '.[test]')")
    report = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--runs", "300", "--report", str(report)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = json.loads(report.read_text())
    assert [r["target"] for r in rows] == ["decoder", "broker", "controller", "ipc", "vmhost", "handshake"]
    assert all(r["runs"] == 300 and r["finding"] is None for r in rows), rows

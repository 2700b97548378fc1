"""Helper processes run boxer's installed code, never the user's (issue 12 item 6): what
boxer._python.module_argv builds, run from a folder that shadows the modules they import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boxer._python import module_argv, split_module_argv


@pytest.mark.parametrize("version", ["3.11+ (-P)", "3.10 (bootstrap)"])
def test_a_helper_does_not_import_from_its_working_directory(tmp_path, monkeypatch, version):
    if version.startswith("3.10"):
        monkeypatch.setattr(sys, "version_info", (3, 10, 0))
    for module in ("json", "logging"):
        (tmp_path / f"{module}.py").write_text(f"raise SystemExit('the user\\'s {module}.py')\n")
    argv = module_argv("json.tool", "--help")
    monkeypatch.undo()
    assert ("-P" in argv) == version.startswith("3.11")
    helper = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert helper.returncode == 0 and "usage" in helper.stdout, helper.stderr
    # What `python -m` alone does there (the reason for module_argv):
    plain = subprocess.run([sys.executable, "-m", "json.tool", "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=30)
    assert plain.returncode != 0 and "the user's json.py" in plain.stderr


def test_the_module_and_its_arguments_are_read_back():
    argv = module_argv("boxer", "run", "--name", "web-1", python="/usr/bin/python3")
    assert argv[0] == "/usr/bin/python3"
    assert split_module_argv(argv) == ("boxer", ["run", "--name", "web-1"])
    assert split_module_argv(["/usr/bin/python3", "-m", "boxer", "run"]) is None

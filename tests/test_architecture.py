"""Dependencies run one way (docs/architecture.md, "The rooms, and what each may import"):
import-linter's contracts in pyproject.toml, checked on every run of the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from installed_tree import link_installed_tree

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold(tmp_path: Path) -> None:
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install '.[test]')")
    # import-linter's graph cannot see the editable install's import hook: it reads the tree of
    # links, in an interpreter without site's .pth files (-S) and with site-packages
    # (import-linter itself) on the path after the tree.
    link_installed_tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"],
                                                         sysconfig.get_paths()["platlib"]])}
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    run = subprocess.run([sys.executable, "-S", "-c", code, "--no-cache", str(tmp_path / "pyproject.toml")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in run.stdout, run.stdout[-3000:]


def test_a_command_whose_extra_is_missing_says_which_to_install(tmp_path: Path) -> None:
    """`pip install boxer` carries what an instance needs; `boxer up` without the control extra
    (pydantic, PyYAML, grpcio) says so in one line instead of a traceback."""
    (tmp_path / "pydantic.py").write_text("raise ModuleNotFoundError('no pydantic here', name='pydantic')\n")
    (tmp_path / "deploy.yaml").write_text("services: {web: {command: [nginx]}}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "boxer", "check", str(tmp_path / "deploy.yaml")],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == ("boxer: `boxer check` needs pydantic, which this installation lacks: "
                                  "pip install 'boxer[control]'")

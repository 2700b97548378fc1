"""The static checks, run by the suite so that CI (the README's test command) runs them too:
ruff on all Python, mypy (strict on the protocol and the controller's pure core, default on the
rest), shellcheck on the shell scripts, and gcc's static analyzer on the C code.

Each check skips with its reason when its tool is missing, never passes silently; the install
script puts every one of them on a fresh machine. `pre-commit run --all-files` runs the same
set before a commit (.pre-commit-config.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from installed_tree import link_installed_tree

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Strict: the sans-IO protocol and the controller's pure judgement, where a wrong type is a
# protocol or scaling bug. (The I/O shells around them are checked with mypy's defaults.)
STRICT_PACKAGES = ["boxer.nat_traversal"]
STRICT_MODULES = ["boxer.controller.policy", "boxer.controller.partition", "boxer.controller.reapply",
                  "boxer.controller.scaling", "boxer.controller.signals", "boxer.controller.spec"]
C_SOURCES = [*sorted((ROOT / "interposer").glob("*.c")), ROOT / "boxer" / "agent" / "fastpath.c",
             ROOT / "boxer" / "agent" / "peercheck.c"]
SHELL_SCRIPTS = [ROOT / "scripts" / "install-deps.sh", ROOT / "scripts" / "generate-control-api.sh",
                 ROOT / ".ci" / "run"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install-deps.sh installs it)")
    return path


def test_ruff_finds_nothing() -> None:
    ruff = _tool("ruff")
    run = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


@pytest.fixture(scope="module")
def import_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as installed (mypy does not run the editable install's import hook)."""
    return link_installed_tree(tmp_path_factory.mktemp("import-tree"))


def _mypy(import_tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    mypy = _tool("mypy")
    env = {**os.environ, "MYPYPATH": str(import_tree)}
    return subprocess.run([mypy, "--no-incremental", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, check=False)


def test_mypy_strict_on_the_protocol_and_the_controllers_core(import_tree: Path) -> None:
    targets = [arg for p in STRICT_PACKAGES for arg in ("-p", p)] + [arg for m in STRICT_MODULES for arg in ("-m", m)]
    run = _mypy(import_tree, "--strict", "--follow-imports=silent", *targets)
    assert run.returncode == 0, run.stdout[-6000:]


def test_shellcheck_on_the_scripts() -> None:
    shellcheck = _tool("shellcheck")
    run = subprocess.run([shellcheck, "--severity=style", *map(str, SHELL_SCRIPTS)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-6000:]


@pytest.mark.parametrize("source", C_SOURCES, ids=lambda p: p.name)
def test_gcc_static_analyzer_finds_nothing(source: Path) -> None:
    gcc = _tool("gcc")
    flags = ["-fanalyzer", "-O1", "-std=gnu11", "-pthread", "-fPIC", "-fvisibility=hidden",
             "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'interposer'}"]
    if source.name == "fastpath.c":
        # Its epoll entries are owned through epoll_event.data.ptr, which the analyzer cannot
        # follow: every add_entry() looks like a leak to it.
        flags.append("-Wno-analyzer-malloc-leak")
    run = subprocess.run([gcc, *flags, "-c", str(source), "-o", os.devnull],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-6000:]

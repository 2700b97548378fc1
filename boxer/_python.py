"""The command line of a Python helper process boxer starts (`python -m MODULE ARGS`).

`python -m` puts the current directory first on sys.path, and boxer's helpers run in the user's
folders: instances start with the deployment file's folder as their cwd, `boxer up` runs wherever
the user is. A `controller/` package, a `yaml.py` or a `logging.py` there would then be imported
instead of boxer's own (or the standard library's) modules. Helpers therefore never get the cwd
on their path:

  * Python >= 3.11: `-P` (safe path: nothing is prepended to sys.path). Not `-I`: it would also
    drop PYTHONPATH and the user site, which an install that is reached through PYTHONPATH (an
    unprivileged `boxer up` in the tests, a distribution's layout) needs.
  * Python 3.10: `-c` with a bootstrap that removes the cwd entry, then runs the module as
    `-m` would (runpy, `__main__`, sys.argv[0] the module's file).

The application a helper starts is the user's program and keeps its own cwd and sys.path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["module_argv", "split_module_argv"]

_BOOTSTRAP = ("import runpy, sys; del sys.path[0], sys.argv[0]; "
              "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def module_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """`python -m module args...`, with nothing from the current directory importable."""
    python = python or sys.executable
    # Helpers run the interpreter boxer runs on (or one of its version: the tests' system Python).
    if sys.version_info >= (3, 11):
        return [python, "-P", "-m", module, *args]
    return [python, "-c", _BOOTSTRAP, module, *args]


def split_module_argv(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(module, args) of an argv made by module_argv, or None if it is not one."""
    argv = list(argv)
    if argv[1:3] == ["-P", "-m"] and len(argv) > 3:
        return argv[3], argv[4:]
    if argv[1:3] == ["-c", _BOOTSTRAP] and len(argv) > 3:
        return argv[3], argv[4:]
    return None

"""The controller's public API, and that the CLI does not pay for it at start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boxer import controller


def test_every_public_name_resolves() -> None:
    for name in controller.__all__:
        assert getattr(controller, name) is not None, name
    with pytest.raises(AttributeError, match="module 'boxer.controller' has no attribute 'nope'"):
        controller.nope  # noqa: B018


def test_check_command_import_does_not_load_pydantic() -> None:
    code = "import sys, boxer.cli.check; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_public_names_resolve_outside_the_source_tree(tmp_path) -> None:
    """From the repo root the folder `controller/` is importable as a top-level package too,
    which once hid that the lazy names were looked up there: run from elsewhere."""
    code = "import boxer.controller as c, sys; c.Deployment; print(any(m.split('.')[0] == 'controller' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "False"

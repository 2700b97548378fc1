"""The package in its installed shape, for tools that read source trees without importing.

The editable install maps `controller/` and `nat_traversal/` into `boxer.` through an import
hook (pyproject.toml's package-dir). mypy and import-linter read files, not hooks, so they are
pointed at a tree of links with the shape a wheel installs: boxer/ holding controller/ and
nat_traversal/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_installed_tree(dest: Path) -> Path:
    """Make dest/boxer a tree of links into this checkout, shaped as installed; returns dest."""
    package = dest / "boxer"
    package.mkdir()
    for entry in (ROOT / "boxer").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "controller").symlink_to(ROOT / "controller")
    (package / "nat_traversal").symlink_to(ROOT / "nat_traversal")
    return dest

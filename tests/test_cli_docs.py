"""docs/cli.md describes every command: each click command of `boxer` (lab's and lambda-local's
subcommands too) has its section, `### boxer NAME`, and every option it takes is named there."""

from __future__ import annotations

import re
from pathlib import Path

import click

from boxer.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(group: click.Group, prefix: str) -> dict[str, click.Command]:
    context = click.Context(group)
    found: dict[str, click.Command] = {}
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix} {name}"))
        else:
            found[f"{prefix} {name}"] = command
    return found


def _sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^### (boxer [a-z -]+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_has_its_section_naming_every_option() -> None:
    sections = _sections()
    commands = _commands(main, "boxer")
    assert len(commands) > 20
    missing = sorted(set(commands) - set(sections))
    assert not missing, f"docs/cli.md has no section for {missing}"
    for name, command in commands.items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            names = [opt for opt in param.opts + param.secondary_opts if opt != "--help"]
            assert any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", sections[name]) for opt in names), \
                f"docs/cli.md, `### {name}`: {names[-1]} is not described"
    assert not sorted(set(sections) - set(commands)), "docs/cli.md describes commands that do not exist"

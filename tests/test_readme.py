"""The README's first screen works when pasted line by line: the blocks marked
`<!-- readme-test ... -->` run here, literally, in a fresh lab.

How a marked block is read, as a person pasting it would:
- each command line runs on its own (`bash -c LINE`) and must exit 0;
- a comment line that says "second terminal" means the next command stays in the foreground
  there: it is started and left running (then a second passes, as when switching terminals);
- a trailing `# prints TEXT, ...` says what the command's output shows: TEXT must be in it.
The one liberty taken: BOXER_LAB names the lab, so the test's lab never meets a real `default`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import unique_lab_name

from boxer.lab import lab_down

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- readme-test"


def marked_blocks(text: str) -> list[list[str]]:
    """The lines of every ```sh block that follows a readme-test mark."""
    blocks, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(MARK):
            continue
        assert lines[i + 1].startswith("```sh"), f"README line {i + 2}: a marked block starts with ```sh"
        end = lines.index("```", i + 2)
        blocks.append(lines[i + 2:end])
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of one line; a `#` inside quotes or inside a word is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def test_the_readme_marks_its_quick_start_and_help_shows_the_same_commands() -> None:
    blocks = marked_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md marks no block for tests/test_readme.py"
    commands = [split_comment(line)[0] for line in blocks[0] if not line.startswith("#")]
    assert commands[0] == "boxer lab up --hosts 2"
    assert commands[-1] == "boxer lab down"
    server = next(c for c in commands if "redis-server" in c)
    assert "--protected-mode no" in server
    main_help = subprocess.run([sys.executable, "-m", "boxer", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for command in commands:
        assert command in main_help, f"`boxer --help` does not show {command!r}"
    run_help = subprocess.run([sys.executable, "-m", "boxer", "run", "--help"], capture_output=True,
                              text=True, check=True).stdout
    assert "redis-server --port 6379 --protected-mode no" in run_help
    demo = (ROOT / "examples/redis/run.py").read_text()
    assert '"--protected-mode", "no"' in demo and "shlex.join(REDIS_SERVER)" in demo


def test_comments_are_split_off_outside_quotes_only() -> None:
    assert split_comment("boxer down   # stops it") == ("boxer down", "stops it")
    assert split_comment("run -- sh -c 'echo #1'") == ("run -- sh -c 'echo #1'", "")
    assert split_comment("redis-server --save ''  # no dump") == ("redis-server --save ''", "no dump")


@pytest.mark.lab
def test_the_quick_start_runs_as_pasted(require_lab: None, tmp_path: Path) -> None:
    block = marked_blocks((ROOT / "README.md").read_text())[0]
    name = unique_lab_name()
    env = {**os.environ, "BOXER_LAB": name,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    foreground: list[subprocess.Popen[str]] = []
    second_terminal = False
    try:
        for line in block:
            command, comment = split_comment(line)
            if not command:
                second_terminal = "second terminal" in comment
                continue
            if second_terminal:
                foreground.append(subprocess.Popen(["bash", "-c", command], env=env, cwd=tmp_path,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True, start_new_session=True))
                second_terminal = False
                time.sleep(1.0)  # switching terminals
                assert foreground[-1].poll() is None, f"{command!r} exited: {foreground[-1].stdout.read()}"
                continue
            ran = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=60)
            assert ran.returncode == 0, f"{command!r} exited {ran.returncode}: {ran.stderr}"
            expected = re.match(r"prints (.+?)(,|$)", comment)
            if expected:
                assert expected.group(1) in ran.stdout, f"{command!r} printed {ran.stdout!r}"
        # `boxer lab down` ended what the second terminal ran, and nothing is left in the cwd.
        for proc in foreground:
            proc.wait(timeout=15)
        assert list(tmp_path.iterdir()) == []
    finally:
        try:
            lab_down(name)  # stops what runs in the lab, the foreground commands' children too
        finally:
            for proc in foreground:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)

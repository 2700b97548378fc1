"""The terminal loop of `boxer top`: redraw a frame fitted to the terminal, quit on q or Ctrl-C.

`frame(width)` gives the text to show and whether to keep going (False: nothing runs, or the
deployment stopped; that text is shown once and top exits). Keys are read in cbreak mode (one
key at a time, no echo, Ctrl-C still a signal) while waiting out the interval, and the terminal's
mode is put back however top ends. Not on a terminal, one frame is printed and top exits.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable

import click

__all__ = ["fit", "run_top"]

Frame = Callable[[int], tuple[str, bool]]

QUIT_KEYS = {"q", "Q"}


def fit(text: str, width: int, height: int) -> str:
    """Lines cut to `width` columns; a frame taller than `height` keeps its first lines and says
    how many more there are (the tables' headers stay in view)."""
    lines = [line if len(line) <= width else line[:max(0, width - 1)] + "~" for line in text.splitlines()]
    if len(lines) > height:
        hidden = len(lines) - (height - 1)
        lines = [*lines[:height - 1], f"... {hidden} more lines (a taller terminal, or `boxer status`)"[:width]]
    return "\n".join(lines)


def _size() -> os.terminal_size:
    """The terminal's size now (it may be resized while top runs): asked of the terminal itself,
    not of $COLUMNS/$LINES, which a shell sets once and a parent may have left behind."""
    try:
        return os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return shutil.get_terminal_size()


def run_top(frame: Frame, interval: float) -> None:
    size = _size()
    if not sys.stdout.isatty():
        text, _ = frame(size.columns)
        click.echo(text)
        return
    stdin = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(stdin) if stdin is not None else None
    try:
        if stdin is not None:
            tty.setcbreak(stdin)
        while True:
            size = _size()
            text, going = frame(size.columns)
            if not going:
                click.echo(text)
                return
            header = time.strftime("%H:%M:%S") + "  q quits"
            body = fit(f"{header}\n{text}", size.columns, size.lines - 1)
            # Home and clear below, not a full clear: no flicker between frames.
            sys.stdout.write("\x1b[H\x1b[2J" + body + "\n")
            sys.stdout.flush()
            if _quit_within(stdin, interval):
                return
    except KeyboardInterrupt:
        return
    finally:
        if stdin is not None and saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _quit_within(stdin: int | None, seconds: float) -> bool:
    """Wait up to `seconds` for a key; True when it was q."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if stdin is None:
            time.sleep(left)
            return False
        readable, _, _ = select.select([stdin], [], [], left)
        if readable:
            key = os.read(stdin, 1).decode(errors="replace")
            if key in QUIT_KEYS:
                return True

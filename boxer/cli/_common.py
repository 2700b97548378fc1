"""What the CLI's commands share: logging set-up, endpoint options, one-line failures."""

from __future__ import annotations

import logging
import os
import sys

import click

from boxer.agent.control import parse_endpoint


def setup_logging(verbose: int, who: str) -> None:
    level = logging.WARNING - 10 * verbose
    level = int(os.environ.get("BOXER_LOG_LEVEL", level)) if os.environ.get("BOXER_LOG_LEVEL", "").isdigit() else level
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"boxer {who}[%(process)d] %(levelname)s %(name)s: %(message)s")


def endpoint_option(value: str, what: str) -> tuple[str, int]:
    """HOST:PORT from an option's value, or a usage error that names the option."""
    try:
        return parse_endpoint(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


class OneLineError(click.ClickException):
    """A mistake of the user's, shown as boxer's one line (`boxer: ...`, exit 1), as every
    command shows them; click's own usage errors keep click's form (usage, then the error, 2)."""

    def show(self, file: object = None) -> None:
        click.echo(f"boxer: {self.format_message()}", err=True)


def fail(message: str, status: int) -> int:
    """Say `message` on stderr as boxer's own error, and give the exit status to leave with."""
    click.echo(f"boxer: {message}", err=True)
    return status

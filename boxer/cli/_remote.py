"""A controller elsewhere: which one a command means, and how to reach it.

`boxer up FILE --controller HOST:PORT --controller-ca CA --controller-token-file FILE` sends FILE
to a controller host (beside the coordinator on AWS: terraform's; in the lab: one in the
coordinator's namespace) and remembers it in the current context (`_context`, as kubectl keeps
a cluster's server and credentials): afterwards `boxer status`, `top`, `down` (and `logs`) of that
deployment go there, through the control API only. `--controller unix:PATH` names a controller
host's Unix socket on this machine (no TLS, no token: the socket is 0600). The same options are
read from $BOXER_CONTROLLER, $BOXER_CONTROLLER_CA, $BOXER_CONTROLLER_TOKEN_FILE and
$BOXER_CONTROLLER_SERVER_NAME. The token file is named, never its content: the context holds
paths only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from boxer.cli import _context

__all__ = ["Remote", "chosen", "controller_options", "forget", "is_remote_deployment", "remember", "remembered_at"]

F = TypeVar("F", bound=Callable[..., Any])
KEYS = ("controller", "controller_ca", "controller_token_file", "controller_server_name")


def controller_options(function: F) -> F:
    """--controller, --controller-ca, --controller-token-file, --controller-server-name."""
    for option in reversed((
        click.option("--controller", metavar="HOST:PORT", envvar="BOXER_CONTROLLER",
                     help="A controller host to talk to (TLS and a token), or unix:PATH "
                          "[default: the one the current deployment was sent to].",
                     callback=_valid_address),
        click.option("--controller-ca", metavar="PEM", envvar="BOXER_CONTROLLER_CA",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The CA certificate its TLS certificate is checked against."),
        click.option("--controller-token-file", metavar="FILE", envvar="BOXER_CONTROLLER_TOKEN_FILE",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The file holding its credential (one line)."),
        click.option("--controller-server-name", metavar="NAME", envvar="BOXER_CONTROLLER_SERVER_NAME",
                     help="The name its certificate is for, when not HOST (terraform's: boxer-controller)."),
    )):
        function = option(function)
    return function


def _valid_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value.startswith("unix:"):
        return value
    from boxer.cli._common import endpoint_option

    endpoint_option(value, "--controller")
    return value


@dataclass(frozen=True)
class Remote:
    """A controller host: where, and what proves it and us."""

    address: str
    ca: Path | None = None
    token_file: Path | None = None
    server_name: str | None = None

    def client(self) -> Any:
        """A ControlClient for it; a UsageError naming what is missing or unreadable."""
        from boxer.controller.api.client import ControlClient

        if self.address.startswith("unix:"):
            return ControlClient.at(self.address)
        if self.ca is None or self.token_file is None:
            raise click.UsageError(f"the controller at {self.address} needs --controller-ca and "
                                   "--controller-token-file (its CA certificate and its token; on AWS "
                                   "the SSM parameters in terraform's outputs, docs/aws.md)")
        try:
            ca, token = self.ca.read_bytes(), self.token_file.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if not token:
            raise click.UsageError(f"{self.token_file} is empty: it should hold the controller's token")
        return ControlClient.at(self.address, ca=ca, token=token, server_name=self.server_name)


def chosen(name: str | None, controller: str | None = None, ca: Path | None = None,
           token_file: Path | None = None, server_name: str | None = None) -> Remote | None:
    """The controller host a command means: the one its options (or their variables) name;
    else the one the context remembers, when the command is about that deployment (`--name`
    is it, or no --name and it is the current one); else None (a deployment on this machine)."""
    if controller:
        return Remote(controller, ca, token_file, server_name)
    remembered = _context.current("controller")
    deployment = _context.current("controller_deployment")
    if not remembered or not deployment:
        return None
    if name != deployment and (name is not None or _context.current("deployment") != deployment):
        return None

    def path(key: str) -> Path | None:
        value = _context.current(key)
        return Path(value) if value else None

    return Remote(remembered, path("controller_ca"), path("controller_token_file"),
                  _context.current("controller_server_name"))


def remember(remote: Remote, deployment: str) -> None:
    """`boxer up --controller`: that deployment is current, and lives there."""
    _context.set_current("controller", remote.address)
    _context.set_current("controller_ca", str(remote.ca.resolve()) if remote.ca else None)
    _context.set_current("controller_token_file", str(remote.token_file.resolve()) if remote.token_file else None)
    _context.set_current("controller_server_name", remote.server_name)
    _context.set_current("controller_deployment", deployment)
    _context.set_current("deployment", deployment)


def remembered_at(address: str) -> str | None:
    """The deployment the context sends to the controller at `address`, if it sends one there."""
    if _context.current("controller") != address:
        return None
    return _context.current("controller_deployment")


def forget() -> None:
    for key in (*KEYS, "controller_deployment"):
        _context.set_current(key, None)


def is_remote_deployment(name: str) -> bool:
    """Whether `name` is the deployment the context last sent to a controller host."""
    return bool(_context.current("controller")) and _context.current("controller_deployment") == name


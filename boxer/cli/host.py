"""`boxer host serve`: the click layer over the vm host daemon (boxer.backends.vmhost.daemon)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from boxer import _aio as aio
from boxer.backends.vmhost.limits import AUTH_DEADLINE, DEFAULT_CAP, UNAUTHENTICATED, UNAUTHENTICATED_PER_SOURCE
from boxer.cli._common import endpoint_option, fail, setup_logging


@click.group("host")
def host() -> None:
    """A vm host: the daemon that starts and stops `vm` instances for the controller."""


@host.command("serve")
@click.option("--listen", default="0.0.0.0:7100", show_default=True, metavar="HOST:PORT",
              help="Where the controller reaches this daemon.")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="The host token (hex), the daemon's only credential: on AWS terraform's "
              "vm_host_token_parameter_name. The host then holds no deployment secret.")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="Instead, where no token is stored: the deployment secret (hex), the token derived "
              "from it as HMAC(secret, 'vmhost') [env BOXER_SECRET_FILE].")
@click.option("--slots", type=click.IntRange(1, 10000), default=1, show_default=True,
              help="Instances at once. An app binds its ports on the host's address, so one instance "
              "per host unless the services use distinct ports.")
@click.option("--log-dir", type=click.Path(file_okay=False), help="Each instance's output goes to "
              "NAME.HOST.log here, where the controller reads it (boxer logs); default: a folder of the "
              "daemon's own, removed when it stops.")
@click.option("--log-cap", type=click.IntRange(1, 1_000_000), default=DEFAULT_CAP // 2**20, show_default=True,
              metavar="MIB", help="An instance's log file is rotated to NAME.HOST.log.1 past this many MiB "
              "(a host keeps at most twice this per instance name).")
@click.option("--name", help="This host's name in logs and errors (default: the machine's).")
@click.option("--run-as", metavar="UID[:GID]", help="Run the instances as this user (numeric), not the "
              "daemon's, so their apps can read neither the daemon's token nor another instance's.")
@click.option("--auth-deadline", type=click.FloatRange(0.1, 300), default=AUTH_DEADLINE, show_default=True,
              metavar="SECONDS", help="A connection that has not proved the host token this long after its "
              "accept is closed (the whole handshake, not per read).")
@click.option("--unauthenticated", "unauthenticated", type=click.IntRange(1, 1_000_000), default=None,
              show_default=f"{UNAUTHENTICATED}, at most (RLIMIT_NOFILE - 24) / 2", metavar="N",
              help="Unauthenticated connections held in all; past it the oldest is closed for the new one. "
              "A number given here is held even past the descriptor limit.")
@click.option("--unauthenticated-per-source", type=click.IntRange(1, 1_000_000),
              default=UNAUTHENTICATED_PER_SOURCE, show_default=True, metavar="N",
              help="Unauthenticated connections held from one address; past it a new one is closed at once.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr.")
def serve_command(listen: str, secret_file: str | None, token_file: str | None, slots: int,
                  log_dir: str | None, log_cap: int, name: str | None, run_as: str | None, auth_deadline: float,
                  unauthenticated: int | None, unauthenticated_per_source: int, verbose: int) -> None:
    """Serve the controller: start each `vm` instance it sends (the same event a function
    instance gets) as `boxer run`, stop it when asked, and report every exit."""
    from boxer.backends.vmhost.daemon import run_daemon
    from boxer.backends.vmhost.protocol import host_token, load_host_token
    from boxer.nat_traversal.auth import SecretError, load_secret

    setup_logging(max(verbose, 1), "host")
    address = endpoint_option(listen, "--listen")
    try:
        if token_file:
            token = load_host_token(token_file)
        else:
            token = host_token(load_secret(secret_file, None))
    except (SecretError, ValueError, OSError) as exc:
        sys.exit(fail(f"no credential for the host daemon: {exc}", 2))
    user = None
    if run_as:
        uid, _, gid = run_as.partition(":")
        if not uid.isdigit() or not (gid or uid).isdigit():
            raise click.BadParameter(f"expected UID or UID:GID (numbers), got {run_as!r}", param_hint="--run-as")
        user = (int(uid), int(gid or uid))
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    sys.exit(aio.run(run_daemon(token, address, slots=slots, log_dir=Path(log_dir) if log_dir else None,
                                host=name, run_as=user, log_cap=log_cap * 2**20, auth_deadline=auth_deadline,
                                unauthenticated=unauthenticated,
                                unauthenticated_per_source=unauthenticated_per_source)))

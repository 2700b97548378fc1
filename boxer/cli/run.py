"""`boxer run`: the click layer over the agent."""

from __future__ import annotations

import os
import re

import click

from boxer import _aio as aio
from boxer.agent.child import InterposerMissing, interposer_path
from boxer.agent.wrapcheck import UnwrappableError, check_wrappable
from boxer.cli._common import endpoint_option, fail, setup_logging
from boxer.nat_traversal import auth
from boxer.nat_traversal.auth import SecretError, load_secret


def _default_name(argv: list[str]) -> str:
    for var in ("BOXER_INSTANCE_NAME", "BOXER_LAB_HOST"):
        if os.environ.get(var):
            return os.environ[var]
    base = re.sub(r"[^a-z0-9-]", "-", os.path.basename(argv[0]).lower()).strip("-") or "app"
    return f"{base[:50]}-{os.urandom(2).hex()}"




def _credential(token_file: str | None, secret_file: str | None, instance_id: str | None) -> auth.Credential:
    """The instance's credential: the token it was issued (bound to its id), or one derived from
    the deployment secret, which is then dropped (only the token is kept)."""
    token_value = os.environ.get(auth.TOKEN_ENV)
    if token_file or token_value:
        if not instance_id:
            raise SecretError("an instance token is bound to one instance id: pass --instance-id (or set "
                              "BOXER_INSTANCE_ID) with the id it was issued for")
        return auth.Credential.of_instance(instance_id, auth.load_token(token_file, token_value))
    if not secret_file and not os.environ.get("BOXER_SECRET"):
        raise SecretError("no credential for this instance: give it its token (--token-file or BOXER_INSTANCE_TOKEN, "
                          "with --instance-id) as a controller issues it, or the deployment secret (--secret-file "
                          "or BOXER_SECRET_FILE; inside the lab, `boxer lab exec` sets it)")
    secret = load_secret(secret_file, os.environ.get("BOXER_SECRET"))
    return auth.Credential.derived(secret, instance_id or auth.new_token(8))


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--name", help="Host name of this instance on the overlay (default: the lab host, or "
              "the program's name with a random suffix). Other instances connect to it by this name.")
@click.option("--service", help="Service this instance belongs to (default: the name without a "
              "trailing -N).")
@click.option("--coordinator", envvar="BOXER_COORDINATOR", metavar="HOST:PORT",
              help="The coordinator's public address [env BOXER_COORDINATOR; set by `boxer lab exec`].")
@click.option("--token-file", envvar=auth.TOKEN_FILE_ENV, type=click.Path(dir_okay=False),
              help="File holding this instance's token (hex), as the controller issues it; with "
              "--instance-id, the deployment secret is not needed [env BOXER_INSTANCE_TOKEN_FILE, "
              "or the token itself in BOXER_INSTANCE_TOKEN].")
@click.option("--secret-file", envvar="BOXER_SECRET_FILE", type=click.Path(dir_okay=False),
              help="File holding the deployment secret (hex), when no token is given: the agent "
              "derives its instance's token from it and forgets it [env BOXER_SECRET_FILE].")
@click.option("--lifetime", type=float, metavar="SECONDS",
              help="Stop the application after this long (Lambda's cap is 900 s).")
@click.option("--connect-timeout", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="How long an overlay connect may take before the app sees ETIMEDOUT.")
@click.option("--instance-id", envvar="BOXER_INSTANCE_ID", metavar="HEX",
              help="Identity of this instance (8-64 lowercase hex; default random). Controllers set it "
              "to tell a replacement from the instance it replaces.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(name, service, coordinator, token_file, secret_file, lifetime, connect_timeout, instance_id,
                verbose, command) -> None:
    """Run COMMAND, unmodified, as a host of the overlay.

    The program listens and connects as on any network; boxer registers it under NAME, answers
    its name lookups for other instances, and turns its connects into direct TCP connections
    punched through both NATs. Its exit status is boxer's.

    \b
    Examples (inside a lab host: `boxer lab exec h1 -- boxer run ...`):
      boxer run --name kv -- redis-server --port 6379 --protected-mode no   # stays in the foreground
      boxer run -- redis-cli -h kv ping                                     # on another host: PONG
    Clients reach the program from other hosts, as on a network: a redis without a password
    needs --protected-mode no, as it would on any host.

    Exit status: COMMAND's; 127 when COMMAND is not found, 126 when boxer cannot wrap it
    (static, Go or setuid binaries), 2 for bad options or a missing coordinator or secret.

    Credentials: a controller starts each instance with its id and its token only (--instance-id,
    BOXER_INSTANCE_TOKEN): the agent never holds the deployment secret. Given the secret instead
    (--secret-file, as `boxer lab exec` sets it), it derives the token and forgets the secret.
    """
    from boxer.agent.runner import RunError, RunOptions, run_instance

    setup_logging(verbose, "agent")
    argv = list(command)
    try:
        check_wrappable(argv)
        interposer_path()
    except FileNotFoundError as exc:
        raise SystemExit(fail(str(exc), 127)) from None
    except (UnwrappableError, InterposerMissing) as exc:
        raise SystemExit(fail(f"refusing to run {argv[0]}: {exc}", 126)) from None
    if not coordinator:
        raise SystemExit(fail("no coordinator: pass --coordinator HOST:PORT or set BOXER_COORDINATOR "
                               "(inside the lab, `boxer lab exec HOST -- boxer run ...` sets it)", 2))
    try:
        credential = _credential(token_file, secret_file, instance_id)
    except SecretError as exc:
        raise SystemExit(fail(str(exc), 2)) from None
    name = (name or _default_name(argv)).lower()
    service = (service or re.sub(r"-\d+$", "", name)).lower()
    opts = RunOptions(argv=argv, name=name, service=service, coordinator=endpoint_option(coordinator, "--coordinator"),
                      credential=credential, lifetime=lifetime, connect_timeout=connect_timeout)
    try:
        status = aio.run(run_instance(opts))
    except RunError as exc:
        raise SystemExit(fail(str(exc), exc.status)) from None
    except ValueError as exc:  # an invalid name/service, caught by message validation
        raise SystemExit(fail(str(exc), 2)) from None
    raise SystemExit(status)

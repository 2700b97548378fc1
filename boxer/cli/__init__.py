"""The `boxer` command: every click command lives in this package, thin; the logic it calls lives
in the component that owns it (the agent, the coordinator, the lab, the controller, a backend).

Subcommands are imported only when used: `boxer run` starts every instance, and importing the
lab, the controller and the deployment commands for it cost a quarter of a second each time."""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute); the order is the order `boxer --help` lists them in
COMMANDS = {
    "run": ("boxer.cli.run", "run_command"),
    "coordinator": ("boxer.cli.coordinator", "coordinator_command"),
    "relay": ("boxer.cli.coordinator", "relay_command"),
    "probe-nat": ("boxer.cli.probe", "probe_nat_command"),
    "probe-lambda": ("boxer.cli.probe", "probe_lambda_command"),
    "lab": ("boxer.cli.lab", "lab"),
    "check": ("boxer.cli.check", "check_command"),
    "up": ("boxer.cli.deploy", "up_command"),
    "status": ("boxer.cli.deploy", "status_command"),
    "top": ("boxer.cli.deploy", "top_command"),
    "down": ("boxer.cli.deploy", "down_command"),
    "logs": ("boxer.cli.logs", "logs_command"),
    "report": ("boxer.cli.deploy", "report_command"),
    "ls": ("boxer.cli.deployments", "ls_command"),
    "use": ("boxer.cli.deployments", "use_command"),
    "rm": ("boxer.cli.deployments", "rm_command"),
    "lambda-local": ("boxer.cli.lambda_local", "lambda_local"),
    "host": ("boxer.cli.host", "host"),
}


# An extra's packages, by the top-level module a command failed to import: `pip install boxer`
# carries what an instance needs, and a command that needs more says which extra brings it.
EXTRA_OF_MODULE = {
    "pydantic": "control", "yaml": "control", "grpc": "control", "google": "control",
    "pyroute2": "lab", "matplotlib": "report", "boto3": "aws", "botocore": "aws",
}


class MissingExtra(click.ClickException):
    def show(self, file: object = None) -> None:
        click.echo(f"boxer: {self.message}", err=True)


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError:
            raise
        except click.ClickException as exc:
            if type(exc).show is not click.ClickException.show:
                raise
            # A command's plain ClickException ("Error: ..."): every error of boxer reads `boxer: ...`.
            from boxer.cli._common import OneLineError

            one_line = OneLineError(exc.format_message())
            one_line.exit_code = exc.exit_code
            raise one_line from None
        except ModuleNotFoundError as exc:
            module = (exc.name or "").split(".")[0]
            extra = EXTRA_OF_MODULE.get(module)
            if extra is None:
                raise
            command = f"boxer {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "boxer"
            raise MissingExtra(f"`{command}` needs {module}, which this installation lacks: "
                               f"pip install 'boxer[{extra}]'") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boxer")
def main() -> None:
    """boxer: run unmodified network applications as hosts of an overlay network,
    on AWS Lambda or on the local lab, behind NATs that refuse inbound connections.

    \b
    Quick start on the lab (needs root):
      boxer lab up --hosts 2
      # in a second terminal (the server stays in the foreground):
      boxer lab exec h1 -- boxer run --name kv -- redis-server --port 6379 --protected-mode no --save ''
      # back in the first:
      boxer lab exec h2 -- boxer run -- redis-cli -h kv ping    # PONG
      boxer lab down

    Every command, its output and exit statuses: docs/cli.md.
    """

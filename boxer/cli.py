"""The `boxer` command: a thin click layer; each command group lives with the code it drives."""

from __future__ import annotations

import click

from boxer.deploy_commands import COMMANDS as deploy_commands
from boxer.lab.commands import lab
from boxer.probe_command import probe_nat_command
from boxer.run_command import coordinator_command, relay_command, run_command
from controller.commands import check_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boxer")
def main() -> None:
    """boxer: run unmodified network applications as hosts of an overlay network,
    on AWS Lambda or on the local lab, behind NATs that refuse inbound connections.

    \b
    Quick start on the lab (needs root):
      boxer lab up --hosts 2
      boxer lab exec h1 -- boxer run --name kv -- redis-server --port 6379
      boxer lab exec h2 -- boxer run -- redis-cli -h kv ping
      boxer lab down
    """


main.add_command(run_command)
main.add_command(coordinator_command)
main.add_command(relay_command)
main.add_command(lab)
main.add_command(check_command)
main.add_command(probe_nat_command)
for _command in deploy_commands:
    main.add_command(_command)

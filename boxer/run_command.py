import click


@click.command("run")
def run_command() -> None:
    """Run one unmodified process as a host of the overlay."""


@click.command("coordinator")
def coordinator_command() -> None:
    """Run the coordinator."""

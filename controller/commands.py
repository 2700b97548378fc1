import click


@click.command("check")
def check_command() -> None:
    """Validate a deployment file without running anything."""

import click


@click.group()
def lab() -> None:
    """The local cloud: instance hosts behind real NAT routers (network namespaces)."""

"""`boxer check FILE`: validate a deployment file without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from boxer.controller.spec import Deployment


@click.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json prints {valid, errors|services} for scripts.",
)
def check_command(file: Path, output: str) -> None:
    """Validate a deployment file without running anything.

    Exits 0 and prints a short summary when FILE is valid, after a `warning:` line on stderr
    for each thing that will likely fail when it runs (a command not found on the PATH the lab's
    instances get); exits 1 and lists every problem (file:line, field, bad value, what is
    allowed, what to write instead) otherwise.
    """
    # Imported here: pydantic costs start-up time every other boxer command should not pay.
    from boxer.controller.errors import DeploymentFileError
    from boxer.controller.validate import deployment_warnings, load_deployment

    try:
        deployment = load_deployment(file)
    except DeploymentFileError as exc:
        if output == "json":
            click.echo(json.dumps(
                {"valid": False, "errors": [issue.to_dict() for issue in exc.issues]},
                indent=2, default=str,
            ))
        else:
            noun = "problem" if len(exc.issues) == 1 else "problems"
            click.echo(f"{file}: {len(exc.issues)} {noun}", err=True)
            for issue in exc.issues:
                click.echo(str(issue), err=True)
        raise SystemExit(1) from None
    warnings = deployment_warnings(file, deployment)
    if output == "json":
        click.echo(json.dumps(
            {"valid": True, "backend": deployment.backend.value, "services": _rows(deployment),
             "warnings": [issue.to_dict() for issue in warnings]},
            indent=2, default=str,
        ))
        return
    for issue in warnings:
        click.echo(f"warning: {issue}", err=True)
    count = len(deployment.services)
    click.echo(f"{file}: valid, backend {deployment.backend.value},"
               f" {count} service{'' if count == 1 else 's'}")
    for row in _rows(deployment):
        click.echo(
            f"  {row['name']:<16} {row['placement']:<9} instances {row['minInstances']}"
            f"..{row['maxInstances']}  {row['autoscale']}"
        )


def _rows(deployment: Deployment) -> list[dict[str, object]]:
    """One summary row per service, shared by the text and json outputs."""
    rows: list[dict[str, object]] = []
    for name, svc in deployment.services.items():
        policy = svc.autoscale
        placement = svc.placement.value
        if svc.base_capacity:
            placement = f"vm+{placement}"
        rows.append({
            "name": name,
            "placement": placement,
            "minInstances": svc.min_instances,
            "maxInstances": svc.effective_max_instances,
            "autoscale": (
                f"{policy.metric.value} target {policy.target:g}" if policy else "fixed size"
            ),
        })
    return rows

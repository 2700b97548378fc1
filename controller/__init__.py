"""The controller: the deployment file, and the pure policy that turns signals into decisions.

Runtime parts (signal collection, backends, `boxer up/status/top/down`) build on this API.
Names are imported on first use (PEP 562) so that `import boxer.cli.check`, which the
`boxer` CLI does at start-up, does not pull in pydantic for commands that never need it.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DeploymentFileError": "errors", "Issue": "errors",
    "DEFAULT_TIMINGS": "policy", "Decision": "policy", "Drain": "policy", "Outcome": "policy",
    "Start": "policy", "Stop": "policy", "Timings": "policy", "decide": "policy",
    "pick_instance": "policy",
    "ControllerState": "signals", "InstanceSignals": "signals", "PendingConnect": "signals",
    "ServiceState": "signals", "Signals": "signals",
    "Deployment": "spec", "Placement": "spec", "RestartPolicy": "spec", "Service": "spec",
    "load_deployment": "validate", "parse_deployment": "validate",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'boxer.controller' has no attribute {name!r}")
    return getattr(importlib.import_module(f"boxer.controller.{home}"), name)


__all__ = [
    "DEFAULT_TIMINGS",
    "ControllerState",
    "Decision",
    "Deployment",
    "DeploymentFileError",
    "Drain",
    "InstanceSignals",
    "Issue",
    "Outcome",
    "PendingConnect",
    "Placement",
    "RestartPolicy",
    "Service",
    "ServiceState",
    "Signals",
    "Start",
    "Stop",
    "Timings",
    "decide",
    "load_deployment",
    "parse_deployment",
    "pick_instance",
]

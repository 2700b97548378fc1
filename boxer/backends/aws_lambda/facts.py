"""The deployment's AWS facts, read from `terraform output -json`, never copied by hand.

    terraform -chdir=terraform output -json > outputs.json

gives {"function_name": {"value": "boxer-demo", "type": "string", "sensitive": false}, ...}.
The names below are the contract with terraform/outputs.tf (tests/test_terraform.py checks it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxer.backends.errors import FactsError

__all__ = ["REQUIRED_OUTPUTS", "LambdaFacts"]

REQUIRED_OUTPUTS = ("function_name", "coordinator_address", "secret_parameter_name", "region")
# The vm tier (terraform/vm_hosts.tf): the Auto Scaling group of the vm hosts and their daemon's
# port. Absent (or an empty group name, vm_host_count = 0): the deployment has no vm hosts.
VM_OUTPUTS = ("vm_host_group", "vm_host_port", "vm_host_token_parameter_name")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")


@dataclass(frozen=True)
class LambdaFacts:
    function_name: str
    coordinator_address: str  # "ip:port", the coordinator's Elastic IP
    secret_parameter_name: str  # SSM SecureString holding the deployment secret
    region: str
    vm_host_group: str | None = None
    vm_host_port: int = 7100
    # SSM SecureString holding the daemons' token (terraform makes one of its own: the hosts never
    # hold the deployment secret); None: the token is derived from the secret (vmhost.protocol).
    vm_host_token_parameter_name: str | None = None

    @classmethod
    def from_outputs(cls, outputs: Any, *, source: str = "terraform outputs") -> LambdaFacts:
        if not isinstance(outputs, dict):
            raise FactsError(source, ["expected the JSON object `terraform output -json` prints"])
        problems: list[str] = []
        values: dict[str, str] = {}
        missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
        if missing:
            problems.append(f"missing output(s): {', '.join(missing)} "
                            "(was `terraform apply` run with this module?)")
        for name in REQUIRED_OUTPUTS:
            if name not in outputs:
                continue
            entry = outputs[name]
            # `terraform output -json` wraps each value; accept a bare value too (hand-made files).
            value = entry.get("value") if isinstance(entry, dict) else entry
            if not isinstance(value, str) or not value:
                problems.append(f"output {name} must be a non-empty string, got {value!r}")
            else:
                values[name] = value
        address = values.get("coordinator_address")
        if address is not None and not _ADDRESS.match(address):
            problems.append(f"coordinator_address {address!r} is not 'ip:port'")
        region = values.get("region")
        if region is not None and not _REGION.match(region):
            problems.append(f"region {region!r} does not look like an AWS region (eu-west-1)")
        vm: dict[str, Any] = {}
        for name in ("vm_host_group", "vm_host_token_parameter_name"):  # optional strings
            value = _value(outputs.get(name))
            if value in (None, ""):
                continue
            if isinstance(value, str):
                vm[name] = value
            else:
                problems.append(f"output {name} must be a string, got {value!r}")
        port = _value(outputs.get("vm_host_port"))
        if port is not None:
            if isinstance(port, str) and port.isdigit():
                port = int(port)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                problems.append(f"output vm_host_port must be a port number, got {port!r}")
            else:
                vm["vm_host_port"] = port
        if problems:
            raise FactsError(source, problems)
        return cls(**values, **vm)

    @classmethod
    def load(cls, path: str | Path) -> LambdaFacts:
        path = Path(path)
        try:
            outputs = json.loads(path.read_text())
        except OSError as exc:
            raise FactsError(str(path), [f"cannot read: {exc.strerror}"]) from None
        except json.JSONDecodeError as exc:
            raise FactsError(str(path), [f"not JSON ({exc})"]) from None
        return cls.from_outputs(outputs, source=str(path))


def _value(entry: Any) -> Any:
    return entry.get("value") if isinstance(entry, dict) else entry

"""The lab's exceptions. Each is a user-facing condition; the CLI prints the message alone."""

from __future__ import annotations


class LabError(Exception):
    """Base class: something about a lab went wrong in a way the user can act on."""


class LabUsageError(LabError):
    """Bad input: an invalid lab name, host count or host name."""


class LabExistsError(LabError):
    """`lab up` on a name that is already taken (by a running lab or the debris of one)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"lab {name!r} already exists: run `boxer lab down --name {name}` first"
        )


class LabNotFoundError(LabError):
    """A lab that has no state on this machine."""

    def __init__(self, name: str, existing: list[str] | None = None) -> None:
        self.name = name
        self.existing = existing or []
        if self.existing:
            hint = (f"labs on this machine: {', '.join(self.existing)}; pass --name "
                    f"{self.existing[0]}, or start one with `boxer lab up --name {name}`")
        else:
            hint = f"start one with `boxer lab up --name {name}`"
        super().__init__(f"no lab named {name!r}: {hint}")


class LabSetupError(LabError):
    """Building the lab failed half way (it has been torn down again)."""


class CoordinatorStartError(LabSetupError):
    """The lab's coordinator exited or did not become ready; carries its log's tail."""

    def __init__(self, reason: str, log_path: str, log_tail: str) -> None:
        self.reason = reason
        self.log_path = log_path
        self.log_tail = log_tail
        super().__init__(
            f"the lab's coordinator {reason}; last lines of {log_path}:\n{log_tail or '(empty)'}"
        )


class NotRootError(LabError):
    """The lab needs root (network namespaces, iptables)."""

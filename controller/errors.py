"""Exceptions of the controller, each carrying the data a user needs to fix the problem."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeploymentError", "DeploymentFileError", "Issue"]


@dataclass(frozen=True)
class Issue:
    """One problem in a deployment file: where it is, what was found and what is allowed."""

    file: str
    line: int | None
    path: str  # dotted field path, e.g. services.web.autoscale.target
    value: object  # the offending value (or None when a field is missing)
    message: str  # what is wrong and what is allowed

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        field = self.path or "(top level)"
        return f"{where}: {field}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "value": self.value,
            "message": self.message,
        }


class DeploymentFileError(Exception):
    """The deployment file cannot be used; `issues` lists every problem found, in file order."""

    def __init__(self, issues: list[Issue]) -> None:
        if not issues:
            raise ValueError("DeploymentFileError needs at least one issue")
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class DeploymentError(Exception):
    """A deployment cannot be brought up, changed or taken down as asked. The message says what
    was wrong and what to do (the CLI shows it as one line); nothing was left half done."""

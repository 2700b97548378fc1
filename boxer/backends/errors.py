"""Exceptions of the backends, each carrying the data a caller needs to act or to explain."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CapacityError",
    "EventError",
    "FactsError",
    "LaunchError",
    "UnknownBackend",
]


class BackendError(Exception):
    """Base class: something a backend could not do."""


class UnknownBackend(BackendError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown backend {name!r}; known backends: {', '.join(known)}")


class LaunchError(BackendError):
    """An instance could not be launched; `code` is the cloud's error code when there is one."""

    def __init__(self, instance: str, message: str, *, code: str | None = None,
                 attempts: int = 1) -> None:
        self.instance = instance
        self.code = code
        self.attempts = attempts
        where = f" ({code})" if code else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"launching {instance!r} failed{tries}{where}: {message}")


class CapacityError(LaunchError):
    """No concurrency slot became free in time."""

    def __init__(self, instance: str, limit: int, waited: float) -> None:
        self.limit = limit
        self.waited = waited
        super().__init__(
            instance,
            f"all {limit} concurrency slots stayed busy for {waited:g} s "
            "(raise max_concurrency or the function's reserved concurrency)",
            code="ConcurrencyLimit",
        )


class FactsError(BackendError):
    """The deployment facts (terraform outputs) are missing or malformed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class EventError(ValueError):
    """A Lambda event does not follow the schema; `problems` lists every bad or missing field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("bad boxer event: " + "; ".join(problems))

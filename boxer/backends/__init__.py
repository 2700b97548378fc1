"""Backends: where instances run (the lab, AWS Lambda, a local Lambda). Chosen by name.

Importing this package is cheap: cloud SDKs are imported by the backend that needs them.
"""

from boxer.backends.base import (
    Backend,
    HandleState,
    InstanceHandle,
    InstanceSpec,
    Placement,
    get_backend,
    known_backends,
    register_backend,
)
from boxer.backends.errors import (
    BackendError,
    CapacityError,
    EventError,
    FactsError,
    LaunchError,
    UnknownBackend,
)

__all__ = [
    "Backend",
    "BackendError",
    "CapacityError",
    "EventError",
    "FactsError",
    "HandleState",
    "InstanceHandle",
    "InstanceSpec",
    "LaunchError",
    "Placement",
    "UnknownBackend",
    "get_backend",
    "known_backends",
    "register_backend",
]

"""What the controller knows: per-instance signals from agents, and its own per-service memory.

Signals are snapshots reported by agents and the interposer (at least once a second); they never
need the application's cooperation. The state is what the controller remembers between ticks
(metric history, recent scaling, instances it asked to start, drain or stop). Both are frozen:
`decide()` takes them and returns a new state, so it stays a pure function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from boxer.controller.spec import Placement

__all__ = [
    "ControllerState",
    "InstanceSignals",
    "PartitionState",
    "PendingConnect",
    "ServiceState",
    "Signals",
    "SlotBackoff",
    "StartingInstance",
]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class InstanceSignals:
    """The latest report of one running instance.

    `id` names one incarnation (a replacement of web-3 is also called web-3, with a new id);
    `name` is the host name the application sees. Times are on the controller's clock.
    """

    id: str
    name: str
    service: str
    index: int
    placement: Placement
    started_at: float
    last_heard: float
    active_connections: int = 0
    accepts_per_second: float = 0.0
    cpu_percent: float = 0.0  # of one instance's CPU allotment (psutil; may exceed 100)
    memory_bytes: int = 0
    listening_ports: frozenset[int] = frozenset()
    exited: bool = False
    exit_status: int | None = None
    idle_seconds: float = 0.0  # no connections and no CPU for this long
    lifetime_left: float | None = None  # seconds; None where instances have no lifetime limit
    draining: bool = False  # the agent has stopped taking new connections
    # When the agent went quiet: the coordinator stopped hearing its heartbeat (sent every
    # 0.2 s from the agent's event loop). None while it is heard.
    quiet_since: float | None = None
    # Started from an earlier revision of its service's command or environment (`boxer up` again
    # with them changed): to be rolled out, replaced by an instance of the current one.
    outdated: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.id) and bool(self.name), "instance id and name must not be empty")
        _require(self.index >= 1, f"instance index starts at 1, got {self.index}")
        for attr in ("active_connections", "accepts_per_second", "cpu_percent", "memory_bytes",
                     "idle_seconds"):
            value = getattr(self, attr)
            _require(value >= 0 and math.isfinite(value), f"{attr} must be >= 0, got {value!r}")
        _require(
            self.exit_status is None or self.exited,
            f"exit_status {self.exit_status} given for an instance that has not exited",
        )

    @property
    def ready(self) -> bool:
        """Listening on at least one port: it can take connections."""
        return bool(self.listening_ports) and not self.exited


@dataclass(frozen=True)
class PendingConnect:
    """A connect held by an agent because its service (or declared host) has no instance."""

    service: str
    since: float
    host: str | None = None  # the declared host name asked for, when not the service name


@dataclass(frozen=True)
class Signals:
    """Everything reported since the last tick."""

    instances: tuple[InstanceSignals, ...] = ()
    pending_connects: tuple[PendingConnect, ...] = ()

    def __post_init__(self) -> None:
        ids = [instance.id for instance in self.instances]
        if len(ids) != len(set(ids)):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"instance ids reported twice: {', '.join(duplicates)}")


@dataclass(frozen=True)
class StartingInstance:
    """An instance the controller asked for that has not reported yet."""

    id: str
    name: str
    index: int
    placement: Placement
    requested_at: float


def _frozen_map(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class SlotBackoff:
    """One instance slot's restart history (a slot is a service's index: web-3 and every
    replacement of it). Kept as long as the slot has restarted at least once."""

    restarts: int = 0  # replacements started for this slot after a failure
    failures: int = 0  # failures in a row of instances that ran less than resetAfterSeconds
    retry_at: float | None = None  # waiting in back-off: the slot is started again at this time
    placement: Placement = Placement.FUNCTION  # of the instance that failed, for its successor
    reason: str = ""  # why the last instance of the slot ended
    exit_status: int | None = None
    failed_at: float | None = None

    @property
    def waiting(self) -> bool:
        return self.retry_at is not None


@dataclass(frozen=True)
class ServiceState:
    """The controller's memory of one service between ticks."""

    # (time, service-wide metric) samples, one per tick, kept for the stable window (Knative).
    samples: tuple[tuple[float, float], ...] = ()
    # (time, recommended count) kept for the HPA stabilization windows.
    recommendations: tuple[tuple[float, int], ...] = ()
    # (time, +n or -n) autoscaling changes kept for the HPA rate-limit periods.
    scale_events: tuple[tuple[float, int], ...] = ()
    panic_since: float | None = None
    panic_peak: int = 0
    last_scale_up: float | None = None
    last_scale_down: float | None = None
    last_active: float | None = None  # last tick the service was above its activation threshold
    starting: tuple[StartingInstance, ...] = ()
    draining: Mapping[str, float] = field(default_factory=_frozen_map)  # id -> drain requested
    stopping: frozenset[str] = frozenset()  # ids told to stop, until they vanish from signals
    renewing: Mapping[str, str] = field(default_factory=_frozen_map)  # old id -> replacement
    # Declared host names being renewed: one name is one instance at a time, so the old one is
    # drained first and its index (-> placement) restarted once it has gone.
    handover: Mapping[int, Placement] = field(default_factory=lambda: MappingProxyType({}))
    retired: int = 0  # instances that ended and, by restart policy, are not to be replaced
    # Instance slots (by index) that have failed: their restart count and crash-loop back-off.
    backoff: Mapping[int, SlotBackoff] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def waiting(self) -> tuple[int, ...]:
        """Indexes of slots waiting in back-off to be started again."""
        return tuple(index for index, slot in self.backoff.items() if slot.waiting)

    @property
    def in_panic(self) -> bool:
        return self.panic_since is not None


Slot = tuple[str, int]  # (service, index): an instance and its replacements share one


@dataclass(frozen=True)
class PartitionState:
    """The controller's memory of instances that went quiet together (deployment-wide).

    An *episode* starts at the first tick that finds an instance not heard (quiet or silent)
    and ends `partition.windowSeconds` after the last tick that found one.
    """

    episode_since: float | None = None
    last_unheard: float | None = None
    # Slots whose instance was replaced for going unheard in this episode: they still count as
    # gone quiet, or replacing them one by one would shrink the share back under the threshold
    # and the rest would go all at once.
    lost: frozenset[Slot] = frozenset()
    # Judged a partition in this episode: the rate limit holds until the episode ends, also
    # while instances come back one by one and the share drops.
    suspected: bool = False
    # Token bucket of rate-limited replacements; starts full (capped when first refilled).
    tokens: float = math.inf
    tokens_at: float = 0.0


@dataclass(frozen=True)
class ControllerState:
    """The controller's memory: one ServiceState per service, a serial for instance ids, and
    what it remembers about instances that went quiet together."""

    services: Mapping[str, ServiceState] = field(default_factory=_frozen_map)
    serial: int = 0
    partition: PartitionState = PartitionState()

    def service(self, name: str) -> ServiceState:
        found = self.services.get(name)  # not .get(name, ServiceState()): that builds one each call
        return found if found is not None else ServiceState()

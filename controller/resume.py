"""What a controller host needs to pick a deployment up again after its own crash, and what it
believes once it has: pure, no I/O but the roster file's (de)serialisation.

A controller that is SIGKILLed (or crashes, or its VM's systemd restarts it) loses the book of
its instances, while the instances themselves run on: a Lambda invocation until its lifetime,
a lab instance (its own session, reparented to init) until it is stopped. The coordinator still
knows them (they stay registered), so a new controller can learn *which* are up from the first
Snapshot of its Watch; what it cannot learn there is which of them are its own incarnations
(`api-3.7`, the slot index, the placement, the revision of the service's command they run) and
which ones it had asked for that have not registered yet. That is the roster: the runtime
writes it (roster.json, atomically) at the end of every tick that changed it, *before* the
launches of that tick reach the backend, so an agent id the coordinator may ever report is in it.

`adopt(roster, members, ...)` is the resume decision:

- in the roster and registered now: running, adopted as it is (no launch: a minInstances
  already met stays met);
- in the roster, not registered, never seen registered, and still within its registration
  deadline: starting (launched just before the crash; decide() waits for it as for its own);
- anything else in the roster: gone while the controller was away (its lifetime ended, it
  crashed); decide() replaces it as the deployment says, like any instance that left;
- registered but not in the roster: not ours (a stranger with the deployment's secret, or an
  instance of an earlier run); left alone, as the book always leaves such instances.

The serial goes on from the roster's, so new incarnation ids never repeat an adopted one's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Adoption", "Kept", "Roster", "adopt", "load_roster"]

ROSTER_VERSION = 1


@dataclass(frozen=True)
class Kept:
    """One instance as the roster keeps it."""

    id: str  # decide()'s id of the incarnation (`kv-1.3`)
    agent_id: str  # the id it registers with
    service: str
    name: str
    index: int
    placement: str  # Placement's value: vm | function
    revision: int
    launched_at: float  # wall clock: when the controller asked for it
    registered: bool  # it had registered with the coordinator when the roster was written
    host: str | None = None


@dataclass(frozen=True)
class Roster:
    """The controller's instances and its counters, as of its last tick."""

    serial: int = 0
    revisions: dict[str, int] = field(default_factory=dict)
    instances: tuple[Kept, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"version": ROSTER_VERSION, "serial": self.serial, "revisions": dict(self.revisions),
                "instances": [asdict(kept) for kept in self.instances]}

    @classmethod
    def from_json(cls, data: Any) -> Roster:
        """ValueError when `data` is not a roster of this version."""
        if not isinstance(data, dict) or data.get("version") != ROSTER_VERSION:
            raise ValueError(f"not a version {ROSTER_VERSION} roster")
        try:
            instances = tuple(Kept(**entry) for entry in data["instances"])
            revisions = {str(k): int(v) for k, v in dict(data.get("revisions") or {}).items()}
            return cls(serial=int(data["serial"]), revisions=revisions, instances=instances)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a roster: {exc}") from None


def load_roster(path: Path) -> Roster | None:
    """The roster in `path`; None when there is none or it is not one (writes are atomic, so a
    crash mid-write leaves the previous one)."""
    try:
        return Roster.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Adoption:
    """What a resumed controller believes: its running and starting instances, those gone."""

    running: tuple[Kept, ...]
    starting: tuple[Kept, ...]
    gone: tuple[Kept, ...]
    serial: int
    revisions: dict[str, int]

    def summary(self) -> str:
        return (f"{len(self.running)} running, {len(self.starting)} starting adopted; "
                f"{len(self.gone)} gone while the controller was away")


def adopt(roster: Roster, members: Iterable[str], services: Iterable[str], now: float,
          register_timeout: float) -> Adoption:
    """The resume decision (see the module's docstring). `members`: the agent ids the
    coordinator's first Snapshot lists; `services`: those of the deployment file (an instance of
    a service the file no longer has is not adopted); `now`: wall clock."""
    registered = set(members)
    known = set(services)
    running: list[Kept] = []
    starting: list[Kept] = []
    gone: list[Kept] = []
    for kept in roster.instances:
        if kept.service not in known:
            gone.append(kept)
        elif kept.agent_id in registered:
            running.append(kept)
        elif not kept.registered and now - kept.launched_at < register_timeout:
            starting.append(kept)
        else:
            gone.append(kept)
    serial = max([roster.serial, *(_serial_of(kept.id) for kept in roster.instances)])
    return Adoption(tuple(running), tuple(starting), tuple(gone), serial, dict(roster.revisions))


def _serial_of(instance_id: str) -> int:
    """`kv-1.7` -> 7 (decide()'s ids are the name and a serial)."""
    _, _, tail = instance_id.rpartition(".")
    return int(tail) if tail.isdigit() else 0

"""What the coordinator and its relay grant anyone, and the counter of what they refused.

Both listen on a public address: anyone may connect, and an instance of the deployment may be
compromised through its own app. Every table and buffer that a peer can make grow therefore has
a bound here, each with a default that a real deployment stays well inside, all settable from
`boxer coordinator` / `boxer relay`. A peer that hits one is refused (its request, or its
connection), the refusal is logged and counted under its `kind` (the metric
`boxer_refusals_total{kind=...}`), and everyone else is served on. docs/security.md lists them.

Sans-IO: the broker enforces its bounds on its own tables; the I/O layers (coordinator.py,
relay.py) enforce those that only they can see (write buffers, descriptors, relayed bytes).
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import logging
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Limits", "Refusals", "RelayLimits", "describe", "with_overrides"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The coordinator's bounds (its control port)."""
    # A connection must send its first frame (Auth or Observe) within this many seconds of being
    # accepted; until then it is unauthenticated. An agent needs one round trip.
    first_frame: float = 5.0
    # Unauthenticated connections at once from one source address. Instances behind one NAT
    # (a Lambda VPC's NAT gateway, a lab router) share an address, and an agent opens one
    # rendezvous connection per connect in flight, each unauthenticated for a round trip (the
    # Challenge, then its Observe): a burst of 300 connects from one host is legitimate, and 64
    # refused a third of it (tests/test_apps.py, 900 connections at once). Half the overall cap:
    # one address can hold no more than half, and past the overall cap the oldest goes.
    unauthenticated_per_source: int = 512
    # ... and from everyone: past it the oldest unauthenticated connection is closed for the new
    # one, so a flood from many addresses delays an agent's login instead of locking it out.
    unauthenticated: int = 1024
    # Services (declared, or named by an instance's Register). Each costs one address from the
    # top of the prefix and an entry in every Members.
    services: int = 1024
    # Connects of one session held for a first instance (scale from zero) at once.
    held_per_session: int = 256
    # Connects of one session waiting for their server agent at once.
    pending_per_session: int = 1024
    # Tickets (rendezvous connections, each a descriptor here) of one session at once. An agent
    # keeps 16, plus one per connect in flight.
    tickets_per_session: int = 512
    # Bytes written to one peer and not yet taken by it: above this its transport is paused
    # (pause_writing); a peer still paused after `write_stall` seconds, or with twice this plus
    # one full Members buffered, is not reading and is dropped.
    write_buffer: int = 4 * 1024 * 1024
    write_stall: float = 10.0

    def __post_init__(self) -> None:
        _check_positive(self)


@dataclass(frozen=True)
class RelayLimits:
    """The relay port's bounds (relayed connections and NAT probes)."""
    first_frame: float = 5.0  # a Probe or Relay frame within this many seconds of the accept
    # Connections before their first frame, per address: as on the control port, one NAT's
    # instances share an address and a burst of relayed connects from one host is legitimate.
    unauthenticated_per_source: int = 512
    unauthenticated: int = 1024  # ... and in all (the oldest is closed for a new one)
    pairs: int = 512  # relayed connections at once (each costs two threads)
    pair_bytes: int = 4 * 1024 ** 3  # bytes one relayed connection may carry, both ways
    pair_duration: float = 3600.0  # seconds one relayed connection may last (a Lambda lives 900)
    pair_idle: float = 600.0  # seconds a relayed connection may carry nothing either way
    # A NAT probe's `again_after` (a second answer after that many idle seconds, which measures
    # the NAT's mapping timeout): at most this, and at most `probes_waiting` such probes held at
    # once (`probes_waiting_per_source` from one address).
    probe_again_after: int = 900
    probes_waiting: int = 64
    probes_waiting_per_source: int = 4

    def __post_init__(self) -> None:
        _check_positive(self)


def _check_positive(limits: Limits | RelayLimits) -> None:
    for field in fields(limits):
        value = getattr(limits, field.name)
        if not value > 0:
            raise ValueError(f"limit {field.name} must be positive, got {value!r}")


def describe(limits: Limits | RelayLimits, prefix: str = "") -> str:
    """`name=default` of every limit, for the CLI's help."""
    def text(value: float) -> str:
        return str(value) if isinstance(value, int) else f"{value:g}"

    return ", ".join(f"{prefix}{f.name.replace('_', '-')}={text(getattr(limits, f.name))}"
                     for f in fields(limits))


def with_overrides(limits: Limits, relay: RelayLimits, settings: list[str]) -> tuple[Limits, RelayLimits]:
    """The limits with `--limit NAME=VALUE` settings applied; `relay.NAME` sets a relay limit.
    ValueError says which setting is wrong and what would be right."""
    changes: dict[str, dict[str, Any]] = {"": {}, "relay.": {}}
    for setting in settings:
        name, sep, value = setting.partition("=")
        scope = "relay." if name.startswith("relay.") else ""
        target: Limits | RelayLimits = relay if scope else limits
        field_name = name[len(scope):].replace("-", "_")
        known = {f.name: f for f in fields(target)}
        if not sep or field_name not in known:
            names = [f"{scope}{n.replace('_', '-')}" for n in known] + \
                    ([f"relay.{f.name.replace('_', '-')}" for f in fields(relay)] if not scope else [])
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"--limit {setting!r}: expected NAME=VALUE with NAME one of {', '.join(names)}{hint}")
        kind = int if isinstance(getattr(target, field_name), int) else float
        try:
            changes[scope][field_name] = kind(value)
        except ValueError:
            raise ValueError(f"--limit {setting!r}: {name} takes {'a whole number' if kind is int else 'a number'}, "
                             f"got {value!r}") from None
    return dataclasses.replace(limits, **changes[""]), dataclasses.replace(relay, **changes["relay."])


class Refusals:
    """Refusals by kind (for the metric), each logged: the first of a kind at once, then at most
    one line per `quiet` seconds per kind with the number since, so a flood cannot fill the log."""

    def __init__(self, quiet: float = 10.0) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._quiet = quiet
        self._logged_at: dict[str, float] = {}
        self._unlogged: collections.Counter[str] = collections.Counter()

    def refuse(self, kind: str, now: float, why: str) -> None:
        self.counts[kind] += 1
        last = self._logged_at.get(kind)
        if last is not None and now - last < self._quiet:
            self._unlogged[kind] += 1
            return
        more = self._unlogged.pop(kind, 0)
        self._logged_at[kind] = now
        log.warning("refused (%s): %s%s", kind, why, f" (and {more} more like it since)" if more else "")

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

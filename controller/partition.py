"""Many instances quiet at once: replace them at a limited rate, or not at all.

An instance that exits is certainly gone. One that goes quiet (the coordinator stopped hearing
its heartbeat) or silent (no report) may well be alive: a network partition between the
coordinator and many instances, or the coordinator's own host stalling, silences many at the
same moment, while their apps go on serving over their direct connections. Replacing them all
at once is a burst of launches (on Lambda: cost, concurrency, throttling) for instances that
may come back. So, deployment-wide, as Kubernetes' node lifecycle controller does per zone:

* fewer than `minQuietInstances` went quiet, or under `quietThresholdPercentage` of the
  deployment: *normal*, each is replaced at once, as always;
* more than one went quiet within `windowSeconds` of the first: *watching* until that window
  has passed, so a burst is judged whole (and instances that come back meanwhile are kept);
* at or over the threshold: *limited*, a suspected partition: at most `replacementsPerSecond`
  replacements, longest quiet first (K8s `secondaryNodeEvictionRate`); this holds until the
  episode ends, even as instances come back;
* at or over `haltThresholdPercentage`: *halted*, none replaced (K8s stops evicting when a
  whole zone is down: the master side is the likely problem).

Shares count slots (service, index): an instance replaced for going quiet still counts as gone
quiet until the episode ends, and its replacement takes its slot, not a new one.

Everything here is a pure function of its arguments; `decide()` calls `judge` once per tick.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from boxer.controller.signals import ControllerState, InstanceSignals, PartitionState, Signals, Slot
from boxer.controller.spec import PartitionPolicy

__all__ = [
    "NORMAL",
    "Mode",
    "Verdict",
    "deployment_slots",
    "judge",
    "unheard_instances",
    "unheard_reason",
]


class Mode(str, Enum):
    NORMAL = "normal"  # every quiet instance is replaced at once
    WATCHING = "watching"  # several went quiet at once: wait out the window before judging
    LIMITED = "limited"  # suspected partition: replaced at most replacementsPerSecond
    HALTED = "halted"  # (nearly) all quiet: none replaced


@dataclass(frozen=True)
class Verdict:
    """This tick's judgement of the deployment's quiet instances."""

    mode: Mode
    quiet: int  # instances not heard now (quiet or silent), not exited, not being stopped
    lost: int  # slots gone quiet in this episode: quiet now, or replaced for it
    instances: int  # slots of the deployment
    replace: frozenset[str] = frozenset()  # ids of quiet instances to fail and replace now
    reason: str | None = None  # why quiet instances are kept; None when none is

    note: str | None = None  # what a replacement made in limited mode adds to its reason

    @property
    def held(self) -> int:
        return self.quiet - len(self.replace)

    @property
    def share(self) -> float:
        """Percent of the deployment's slots gone quiet in this episode."""
        return 100 * self.lost / max(self.instances, 1)


NORMAL = Verdict(Mode.NORMAL, 0, 0, 0)


def unheard_reason(instance: InstanceSignals, now: float, silent_after: float) -> str | None:
    """Why an instance that has not exited counts as failed by silence, or None if it is heard:
    its agent's heartbeat stopped (quiet), or no report for longer than `silent_after` (the
    backstop for an agent that does not beat)."""
    if instance.exited:
        return None
    if instance.quiet_since is not None:
        return f"agent quiet for {max(0.0, now - instance.quiet_since):.1f} s (no heartbeat)"
    silent = now - instance.last_heard
    if silent > silent_after:
        return f"silent for {silent:.1f} s (limit {silent_after:g} s)"
    return None


def unheard_instances(signals: Signals, state: ControllerState, now: float,
                      silent_after: float) -> list[InstanceSignals]:
    """Instances failed by silence that `decide()` has not already told to stop."""
    return [
        instance for instance in signals.instances
        if instance.id not in state.service(instance.service).stopping
        and unheard_reason(instance, now, silent_after) is not None
    ]


def deployment_slots(signals: Signals, state: ControllerState) -> set[Slot]:
    """The deployment's slots: instances reported and not being stopped, and instances asked
    for that have not reported yet (a replacement fills its predecessor's slot)."""
    slots = {
        (instance.service, instance.index) for instance in signals.instances
        if instance.id not in state.service(instance.service).stopping
    }
    for name, service_state in state.services.items():
        slots.update((name, start.index) for start in service_state.starting)
    return slots


def judge(
    policy: PartitionPolicy,
    unheard: Sequence[InstanceSignals],
    slots: Iterable[Slot],
    memory: PartitionState,
    now: float,
) -> tuple[Verdict, PartitionState]:
    """Which unheard instances to fail and replace this tick, and the memory for the next."""
    memory = _refill(_advance_episode(memory, bool(unheard), now, policy), policy, now)
    if not unheard:
        return NORMAL, memory
    lost = memory.lost | {_slot(i) for i in unheard}
    total = len(lost | set(slots))
    mode = _mode(policy, memory, len(lost), total, now)
    chosen, memory = _choose(mode, unheard, memory)
    verdict = Verdict(mode, len(unheard), len(lost), total, frozenset(i.id for i in chosen))
    verdict = replace(verdict, reason=_reason(verdict, policy), note=_note(verdict, policy))
    memory = replace(
        memory,
        lost=memory.lost | {_slot(i) for i in chosen},
        suspected=memory.suspected or mode in (Mode.LIMITED, Mode.HALTED),
    )
    return verdict, memory


def _slot(instance: InstanceSignals) -> Slot:
    return (instance.service, instance.index)


def _advance_episode(memory: PartitionState, any_unheard: bool, now: float,
                     policy: PartitionPolicy) -> PartitionState:
    """Start an episode at the first unheard instance; end it a window after the last one."""
    if any_unheard:
        since = memory.episode_since if memory.episode_since is not None else now
        return replace(memory, episode_since=since, last_unheard=now)
    if memory.last_unheard is not None and now - memory.last_unheard < policy.window_seconds:
        return memory  # the tail of the episode: a straggler still counts with the others
    return PartitionState(tokens=memory.tokens, tokens_at=memory.tokens_at)


def _mode(policy: PartitionPolicy, memory: PartitionState, lost: int, total: int,
          now: float) -> Mode:
    assert memory.episode_since is not None
    share = 100 * lost / max(total, 1)
    if lost > 1 and now - memory.episode_since < policy.window_seconds:
        return Mode.WATCHING
    partition = lost >= policy.min_quiet_instances and share >= policy.quiet_threshold_percentage
    if partition and share >= policy.halt_threshold_percentage:
        return Mode.HALTED
    if partition or memory.suspected:
        return Mode.LIMITED
    return Mode.NORMAL


def _choose(mode: Mode, unheard: Sequence[InstanceSignals],
            memory: PartitionState) -> tuple[list[InstanceSignals], PartitionState]:
    """The instances to replace now: all, none, or as many as the bucket has tokens for,
    longest unheard first."""
    if mode is Mode.NORMAL:
        return list(unheard), memory
    if mode is not Mode.LIMITED:
        return [], memory
    allowed = min(len(unheard), math.floor(memory.tokens + 1e-9))
    ordered = sorted(unheard, key=lambda i: (_unheard_since(i), i.service, i.index, i.id))
    return ordered[:allowed], replace(memory, tokens=memory.tokens - allowed)


def _unheard_since(instance: InstanceSignals) -> float:
    return instance.quiet_since if instance.quiet_since is not None else instance.last_heard


def _refill(memory: PartitionState, policy: PartitionPolicy, now: float) -> PartitionState:
    """Token bucket: `replacementsPerSecond` tokens a second, at most one second's worth (at
    least one token, so a rate under 1 per second still lets one through now and then)."""
    rate = policy.replacements_per_second
    capacity = max(1.0, rate)
    tokens = min(capacity, memory.tokens + max(0.0, now - memory.tokens_at) * rate)
    if rate == 0:
        tokens = 0.0
    return replace(memory, tokens=tokens, tokens_at=now)


def _counts(verdict: Verdict) -> str:
    return (f"{verdict.lost} of {verdict.instances} instances ({verdict.share:.0f} %) went"
            " quiet at once")


def _reason(verdict: Verdict, policy: PartitionPolicy) -> str | None:
    if verdict.mode is Mode.WATCHING:
        return (f"{_counts(verdict)}: watching {policy.window_seconds:g} s from the first"
                " before replacing any, in case it is a partition")
    if verdict.mode is Mode.HALTED:
        return (f"suspected partition at the coordinator: {_counts(verdict)}"
                f" (halt threshold {policy.halt_threshold_percentage:g} %): replacing none"
                " until some are heard again")
    if verdict.mode is Mode.LIMITED:
        rate = policy.replacements_per_second
        pace = f"at most {rate:g} per second" if rate > 0 else "none (replacementsPerSecond 0)"
        return (f"suspected partition: {_counts(verdict)}"
                f" (threshold {policy.quiet_threshold_percentage:g} %): replacing {pace};"
                f" {verdict.held} kept for now")
    return None


def _note(verdict: Verdict, policy: PartitionPolicy) -> str | None:
    if verdict.mode is not Mode.LIMITED:
        return None
    return (f"suspected partition ({verdict.lost} of {verdict.instances} went quiet at once):"
            f" at most {policy.replacements_per_second:g} replaced per second")

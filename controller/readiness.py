"""When `boxer up` may return, and what it says: a pure judgement of the status the controller
writes (status.json), so it is tested without a lab.

Per service, from the instances' rows and the recent failures:

* `ready`: its wanted instances listen (or it wants none: it starts on its first connect);
* `failing`: a slot is in crash-loop back-off, or an instance of it failed since this
  `boxer up` began and none listens yet: the reason is the latest failure's (its exit status,
  the last line of its log);
* `not listening`: an instance has run `patience` seconds since it registered without opening a
  port (a program that never listens: `sleep 1000`);
* otherwise it is still starting.

`--detach` returns once every service is ready, failing or not listening (a few seconds);
`--wait` returns once every service is ready, or at once when one is crash-looping (as
`docker compose up --wait` fails when a container exits), or at its timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DETACH_PATIENCE", "BringUp", "crash_loops", "judge_bring_up"]

DETACH_PATIENCE = 2.5  # seconds an instance may run without listening before --detach says so

READY, STARTING, FAILING, NOT_LISTENING = "ready", "starting", "failing", "not listening"


@dataclass(frozen=True)
class BringUp:
    """The services by verdict (name -> why, for those not ready)."""

    ready: tuple[str, ...] = ()
    starting: tuple[str, ...] = ()
    failing: Mapping[str, str] = field(default_factory=dict)  # crash-looping or failed
    not_listening: Mapping[str, str] = field(default_factory=dict)
    connected: bool = True

    @property
    def settled(self) -> bool:
        """--detach may return: every service ready, failing or not listening."""
        return self.connected and not self.starting

    @property
    def all_ready(self) -> bool:
        return self.connected and not (self.starting or self.failing or self.not_listening)

    def crash_looping(self) -> bool:
        return any("back-off" in why or "crash loop" in why for why in self.failing.values())

    def problems(self) -> list[str]:
        """One clause per service that is not ready: `name fails: why`."""
        return ([f"{name} fails: {why}" for name, why in self.failing.items()]
                + [f"{name} {why}" for name, why in self.not_listening.items()]
                + [f"{name} is still starting" for name in self.starting])


def judge_bring_up(status: Mapping[str, Any] | None, wants: Mapping[str, int], since: float,
                   patience: float = DETACH_PATIENCE) -> BringUp:
    """`wants`: per service, the instances `boxer up` waits for (its minInstances);
    `since`: wall time this `boxer up` began (older failures are not this run's)."""
    if not status:
        return BringUp(starting=tuple(wants), connected=False)
    rows = status.get("instances", [])
    failures = [f for f in status.get("failures", []) if f.get("at", 0) >= since]
    verdicts: dict[str, tuple[str, str]] = {}
    for name, svc in status.get("services", {}).items():
        if name not in wants:
            continue
        mine = [r for r in rows if r.get("service") == name]
        ready = sum(1 for r in mine if r.get("state") == "ready")
        want = max(int(svc.get("desired", 0)), wants[name])
        if ready >= want:
            verdicts[name] = (READY, "")
            continue
        backoff = [r for r in mine if r.get("state") == "backoff"]
        failed = [f for f in failures if f.get("service") == name]
        if backoff or failed:
            verdicts[name] = (FAILING, _why_failed(failed[-1] if failed else None, backoff))
            continue
        # Registered (its agent runs the app) this long without a listening port. Until it
        # registers, an instance is still being started (a Lambda cold start can take seconds),
        # and one that never registers fails at the registration deadline, as a failure above.
        running = [r["age"] - r["registered_after"] for r in mine
                   if r.get("state") == "starting" and r.get("age") is not None
                   and r.get("registered_after") is not None]
        if running and max(running) >= patience:
            verdicts[name] = (NOT_LISTENING, f"runs {max(running):.1f} s without listening on any port")
        else:
            verdicts[name] = (STARTING, "")
    for name in wants:
        verdicts.setdefault(name, (STARTING, ""))
    return BringUp(
        ready=tuple(n for n, (v, _) in verdicts.items() if v == READY),
        starting=tuple(n for n, (v, _) in verdicts.items() if v == STARTING),
        failing={n: why for n, (v, why) in verdicts.items() if v == FAILING},
        not_listening={n: why for n, (v, why) in verdicts.items() if v == NOT_LISTENING},
        connected=bool(status.get("connected")),
    )


def crash_loops(status: Mapping[str, Any] | None, since: float) -> dict[str, str]:
    """Services an instance of which ran, exited with a failure status since `since` and waits
    in crash-loop back-off (what `boxer up` of an edited file stops waiting on: a rollout to a
    broken command never finishes, though the instances from before keep every service ready):
    name -> why. A launch that failed (no free host yet, a throttled invocation: exit status
    absent or negative) is the backend's, and may pass: not counted."""
    found: dict[str, str] = {}
    for failure in (status or {}).get("failures", []):
        code = failure.get("exit_status")
        if (failure.get("at", 0) >= since and failure.get("service") and isinstance(code, int) and code > 0
                and "back-off" in str(failure.get("then") or "")):
            found[str(failure["service"])] = _why_failed(failure, [])
    return found


def _why_failed(failure: Mapping[str, Any] | None, backoff: list[Mapping[str, Any]]) -> str:
    if failure is None:  # only the back-off row (its failures are older than this run)
        row = backoff[0]
        failure = {"reason": row.get("error") or "failed", "exit_status": row.get("exit_status"),
                   "last_log": row.get("last_log"), "then": "crash loop (back-off)"}
    why = str(failure.get("reason") or "failed")
    status = failure.get("exit_status")
    if status is not None and "status" not in why:
        why += f" (exit status {status})"
    if failure.get("then"):
        why += f"; {failure['then']}"
    last = (failure.get("last_log") or [])[-1:]
    if last:
        why += f"; last log line: {last[0]}"
    return why

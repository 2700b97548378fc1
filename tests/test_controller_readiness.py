"""When `boxer up --detach / --wait` returns and what it says (controller/readiness.py)."""

from __future__ import annotations

from boxer.controller.readiness import judge_bring_up

SINCE = 1000.0


def row(service: str, state: str, age: float | None = 1.0, registered_after: float | None = 0.5, **extra):
    return {"service": service, "name": f"{service}-1", "state": state, "age": age,
            "registered_after": registered_after, **extra}


def status(*rows, failures=(), services=("web",), connected=True):
    return {"connected": connected, "services": {name: {"desired": 1} for name in services},
            "instances": list(rows), "failures": list(failures)}


def test_a_listening_service_is_ready_and_a_young_one_still_starting():
    verdict = judge_bring_up(status(row("web", "ready")), {"web": 1}, SINCE)
    assert verdict.all_ready and verdict.settled
    verdict = judge_bring_up(status(row("web", "starting", age=1.0)), {"web": 1}, SINCE)
    assert not verdict.settled and verdict.problems() == ["web is still starting"]


def test_crash_looping_and_never_listening_services_are_named_with_why():
    crash = {"at": SINCE + 1, "service": "crashy", "name": "crashy-1", "reason": "exited with status 3",
             "exit_status": 3, "then": "crash loop: started again in 1 s (back-off)",
             "last_log": ["starting", "fatal: no config"]}
    verdict = judge_bring_up(status(row("crashy", "backoff", age=None, registered_after=None),
                                    row("idle", "starting", age=3.2, registered_after=0.5), failures=[crash],
                                    services=("crashy", "idle")), {"crashy": 1, "idle": 1}, SINCE)
    assert verdict.settled and not verdict.all_ready and verdict.crash_looping()
    assert verdict.problems() == [
        "crashy fails: exited with status 3; crash loop: started again in 1 s (back-off); "
        "last log line: fatal: no config",
        "idle runs 2.7 s without listening on any port"]


def test_failures_before_this_run_and_recovered_services_do_not_count():
    old = {"at": SINCE - 5, "service": "web", "name": "web-1", "reason": "exited with status 1"}
    assert judge_bring_up(status(row("web", "starting"), failures=[old]), {"web": 1}, SINCE).starting == ("web",)
    new = {**old, "at": SINCE + 1}
    assert judge_bring_up(status(row("web", "ready"), failures=[new]), {"web": 1}, SINCE).all_ready


def test_an_unregistered_instance_is_still_starting_and_a_disconnected_controller_unsettled():
    verdict = judge_bring_up(status(row("web", "starting", age=9.0, registered_after=None)), {"web": 1}, SINCE)
    assert verdict.problems() == ["web is still starting"]  # until the registration deadline fails it
    assert not judge_bring_up(status(row("web", "ready"), connected=False), {"web": 1}, SINCE).settled
    assert not judge_bring_up(None, {"web": 1}, SINCE).settled


def test_a_service_at_zero_is_ready():
    verdict = judge_bring_up({"connected": True, "services": {"web": {"desired": 0}}, "instances": []},
                             {"web": 0}, SINCE)
    assert verdict.all_ready


def test_an_apply_stops_waiting_on_a_crash_loop_its_change_began():
    """A rollout to a misspelled command: the old instance keeps the service ready, its
    successor crash-loops. crash_loops names it (only failures since the apply, only back-offs)."""
    from boxer.controller.readiness import crash_loops

    typo = {"at": SINCE + 2, "service": "api", "name": "api-3", "reason": "exited with status 127",
            "exit_status": 127, "then": "crash loop: started again in 1 s (back-off)",
            "last_log": ["boxer: command not found: pythn3"]}
    older = {**typo, "at": SINCE - 5, "service": "web"}
    once = {**typo, "then": "started again at once"}
    rolling = status(row("api", "ready"), row("api", "backoff", age=None), failures=[older, once, typo],
                     services=("api", "web"))
    assert judge_bring_up(rolling, {"api": 1}, SINCE).all_ready  # what the apply waited on before
    assert crash_loops(rolling, SINCE) == {
        "api": "exited with status 127; crash loop: started again in 1 s (back-off); last log line: "
               "boxer: command not found: pythn3"}
    assert crash_loops(status(row("api", "ready"), failures=[older, once]), SINCE) == {}
    no_host = {**typo, "reason": "launching 'api-3' failed (ConcurrencyLimit): all 3 concurrency slots stayed "
                                 "busy for 10 s", "exit_status": -1}
    assert crash_loops(status(row("api", "ready"), failures=[no_host]), SINCE) == {}  # may pass: not the change's

"""`boxer up FILE` on a running deployment: which edits apply live, which are refused (pure)."""

from __future__ import annotations

from boxer.controller.reapply import plan_reapply
from boxer.controller.validate import parse_deployment

BASE = """
name: shop
services:
  api:
    command: [srv, --port, "8080"]
    minInstances: 1
    maxInstances: 13
    autoscale: {target: 5}
  db:
    command: [redis-server]
    placement: vm
"""


def deployment(text: str = BASE):
    return parse_deployment(text)


def edited(old: str, new: str):
    assert old in BASE
    return parse_deployment(BASE.replace(old, new))


def test_no_edit_is_no_change() -> None:
    plan = plan_reapply(deployment(), deployment())
    assert plan.ok and plan.changes == () and plan.refused == ()


def test_counts_and_autoscaling_apply_live_with_old_and_new_values() -> None:
    plan = plan_reapply(deployment(), edited("minInstances: 1\n    maxInstances: 13\n    autoscale: {target: 5}",
                                             "minInstances: 13\n    maxInstances: 13\n    autoscale: {target: 2}"))
    assert plan.ok
    assert plan.changes == ("services.api.autoscale.target: 5.0 -> 2.0",
                            "services.api.minInstances: 1 -> 13")


def test_a_default_made_explicit_with_the_same_value_is_no_change() -> None:
    plan = plan_reapply(deployment(), edited("autoscale: {target: 5}",
                                             "autoscale: {target: 5, stableWindowSeconds: 60}"))
    assert plan.ok and plan.changes == ()


def test_adding_autoscale_to_a_fixed_service_applies() -> None:
    plan = plan_reapply(deployment(), edited("placement: vm", "placement: vm\n    autoscale: {target: 3}"))
    assert plan.ok
    assert plan.changes[0].startswith("services.db.autoscale: (unset) -> {")


def test_a_new_command_or_environment_is_rolled_out() -> None:
    plan = plan_reapply(deployment(), edited('command: [srv, --port, "8080"]', 'command: [srv, --port, "9090"]'))
    assert plan.ok and plan.rollouts == ("api",)
    assert plan.changes == ("services.api.command: ['srv', '--port', '8080'] -> ['srv', '--port', '9090']",)
    plan = plan_reapply(deployment(), edited("placement: vm", "placement: vm\n    env: {A: b}"))
    assert plan.ok and plan.rollouts == ("db",)
    assert plan.changes == ("services.db.env.A: (unset) -> b",)


def test_counts_alone_roll_nothing_out() -> None:
    assert plan_reapply(deployment(), edited("minInstances: 1\n", "minInstances: 2\n")).rollouts == ()


def test_where_instances_run_is_refused_by_path() -> None:
    plan = plan_reapply(deployment(), edited("placement: vm", "placement: function"))
    assert not plan.ok
    assert plan.refused == ("services.db.placement",)


def test_a_service_added_applies_and_one_removed_is_refused() -> None:
    plan = plan_reapply(deployment(), deployment(BASE + "  cache:\n    command: [memcached]\n"))
    assert plan.ok and plan.changes == ("services.cache: added",) and plan.rollouts == ()
    plan = plan_reapply(deployment(), edited("  db:\n", "  cache:\n"))
    assert plan.changes == ("services.cache: added",)
    assert plan.refused == ("services.db (removed)",)


def test_mixed_edits_report_both_lists() -> None:
    plan = plan_reapply(deployment(), edited("minInstances: 1\n", "minInstances: 2\n").model_copy(
        update={"name": "other"}))
    assert plan.changes == ("services.api.minInstances: 1 -> 2",)
    assert plan.refused == ("name",)


def test_status_shows_a_rollout_in_progress() -> None:
    from boxer.cli.status_view import status_text

    instance = {"service": "api", "name": "api-1", "state": "ready", "placement": "function",
                "address": "100.64.0.1", "connections": 0, "cpu": 0.0, "age": 5.0,
                "lifetime_left": 800.0, "ready_after": 0.3, "direct": 0, "relayed": 0, "rss": 2**20,
                "instance_id": "ab" * 8, "host": "h1", "revision": 1}
    status = {"name": "shop", "lab": "shopd", "coordinator": "198.18.0.1:7000", "connected": True,
              "services": {"api": {"placement": "function", "min": 1, "max": 3, "desired": 1,
                                   "load": 0, "revision": 2, "outdated": 1}},
              "instances": [instance]}
    text = status_text(status, wide=False)
    assert "rolling out: api (revision 2: 1 of an earlier one left)" in text
    wide = status_text(status, wide=True)
    assert "2 (1 to roll out)" in wide and "REV" in wide
    done = {**status, "services": {"api": {**status["services"]["api"], "outdated": 0}}}
    assert "rolling out" not in status_text(done, wide=False)


def test_lambda_concurrency_and_registration_timeout_apply_its_outputs_are_refused() -> None:
    lambda_base = "name: shop\nbackend: lambda\nservices:\n  api: {command: [srv]}\n"
    running = parse_deployment(lambda_base)
    explicit = lambda_base + "lambda: {maxConcurrency: 100, registerTimeoutSeconds: 30}\n"
    assert plan_reapply(running, parse_deployment(explicit)).changes == ()  # the defaults
    plan = plan_reapply(running, parse_deployment(
        lambda_base + "lambda: {maxConcurrency: 40, registerTimeoutSeconds: 60}\n"))
    assert plan.ok and plan.rollouts == ()
    assert plan.changes == ("lambda.maxConcurrency: 100 -> 40",
                            "lambda.registerTimeoutSeconds: 30.0 -> 60.0")
    plan = plan_reapply(running, parse_deployment(
        lambda_base + "lambda: {outputs: other/outputs.json, maxConcurrency: 40}\n"))
    assert plan.refused == ("lambda.outputs",)
    assert plan.changes == ("lambda.maxConcurrency: 100 -> 40",)

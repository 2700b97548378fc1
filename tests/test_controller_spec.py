"""The deployment file model: defaults, identities, placement."""

from __future__ import annotations

import pytest

from boxer.controller.spec import (
    AutoscalePolicy,
    Backend,
    Deployment,
    Metric,
    Placement,
    RestartPolicy,
    Service,
)


def service(**fields: object) -> Service:
    return Service.model_validate({"command": ["srv"], **fields})


def test_service_defaults() -> None:
    svc = service()
    assert svc.placement is Placement.FUNCTION
    assert (svc.min_instances, svc.max_instances, svc.effective_max_instances) == (1, None, 1)
    assert svc.restart_policy is RestartPolicy.ALWAYS
    assert (svc.lifetime_seconds, svc.renewal_margin_seconds) == (900.0, 60)
    assert svc.autoscale is None and svc.hostnames is None and svc.env == {}


def test_vm_instances_have_no_lifetime() -> None:
    assert service(placement="vm").lifetime_seconds is None


def test_autoscale_defaults_follow_knative_and_hpa() -> None:
    policy = AutoscalePolicy.model_validate({"target": 5})
    assert policy.metric is Metric.ACTIVE_CONNECTIONS
    assert (policy.stable_window_seconds, policy.panic_window_seconds,
            policy.panic_threshold_percentage) == (60, 6, 200)
    assert (policy.scale_to_zero_grace_period_seconds, policy.activation_threshold,
            policy.scale_from_zero_timeout_seconds) == (30, 0, 10)
    up, down = policy.behavior.scale_up, policy.behavior.scale_down
    assert (up.stabilization_window_seconds, up.select_policy, up.cooldown_seconds) == (0, "Max", 0)
    assert [(p.type, p.value, p.period_seconds) for p in up.policies] == [
        ("Pods", 4, 15), ("Percent", 100, 15)]
    assert down.stabilization_window_seconds == 300
    assert [(p.type, p.value, p.period_seconds) for p in down.policies] == [("Percent", 100, 15)]


def test_deployment_backend_default_and_values() -> None:
    deployment = Deployment.model_validate({"services": {"web": {"command": ["x"]}}})
    assert deployment.backend is Backend.LOCAL
    assert [b.value for b in Backend] == ["local", "lambda", "lambda-local"]


def test_numbers_become_strings_like_compose() -> None:
    svc = service(command=["redis-server", "--port", 6379], env={"PORT": 80, "RATIO": 0.5})
    assert svc.command == ("redis-server", "--port", "6379")
    assert svc.env == {"PORT": "80", "RATIO": "0.5"}


def test_render_fills_index_and_name_and_sets_identity_env() -> None:
    svc = service(
        command=["srv", "--id={index}", "--me", "{name}", "-g", "events { worker_connections 1; }"],
        env={"LABEL": "{name}/{index}", "OTHER": "{unknown}"},
    )
    rendered = svc.render("api", 3, Placement.FUNCTION)
    assert rendered.name == "api-3"
    assert rendered.command == ("srv", "--id=3", "--me", "api-3", "-g",
                                "events { worker_connections 1; }")
    assert rendered.env == {"LABEL": "api-3/3", "OTHER": "{unknown}",
                            "BOXER_INSTANCE_INDEX": "3", "BOXER_INSTANCE_NAME": "api-3"}


def test_declared_hostnames_name_instances_in_order() -> None:
    svc = service(hostnames=["kv-a", "kv-b"], maxInstances=2, minInstances=2)
    assert [svc.instance_name("kv", i) for i in (1, 2, 3)] == ["kv-a", "kv-b", "kv-3"]
    with pytest.raises(ValueError, match="instance index starts at 1, got 0"):
        svc.instance_name("kv", 0)


def test_base_capacity_puts_first_instances_on_vm() -> None:
    svc = service(baseCapacity=2, maxInstances=5,
                  autoscale={"target": 1})
    assert [svc.placement_for(n) for n in (0, 1, 2, 3)] == [
        Placement.VM, Placement.VM, Placement.FUNCTION, Placement.FUNCTION]
    assert service(placement="vm").placement_for(7) is Placement.VM

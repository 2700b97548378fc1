"""The deployment file model: services, their placement and their autoscale policy.

Field names are camelCase because users copy them from Kubernetes (HPA `behavior`), KEDA and
Knative; the Python attributes are snake_case and carry the camelCase name as their alias. Every
model forbids unknown fields so a typo is an error, never a silently ignored setting.

This module is stage one of validation (types, ranges, allowed values of single fields). Checks
that relate several fields live in `boxer.controller.checks` so their messages can show all values.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# Where an instance runs is the backends' word: one enum, the file's field and the backend's spec.
from boxer.backends.base import Placement

__all__ = [
    "LAMBDA_MAX_LIFETIME_SECONDS",
    "AutoscalePolicy",
    "Backend",
    "Behavior",
    "Deployment",
    "LambdaSettings",
    "Metric",
    "PartitionPolicy",
    "Placement",
    "RenderedInstance",
    "RestartBackoff",
    "RestartPolicy",
    "ScalingPolicy",
    "ScalingRules",
    "Service",
]

# AWS Lambda stops an invocation after 900 s; a `function` instance cannot live longer.
LAMBDA_MAX_LIFETIME_SECONDS = 900.0

# Names double as overlay host names, so they follow the DNS label rule (RFC 1123).
_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_PLACEHOLDER = re.compile(r"\{(index|name)\}")

HostName = Annotated[str, StringConstraints(pattern=_DNS_LABEL)]


def _scalar_to_str(value: object) -> object:
    """Accept numbers where a string is expected (`PORT: 80`, `[--port, 6379]`) like Compose does.

    Booleans are left alone so pydantic rejects them: YAML reads `yes`/`on` as true, and turning
    that into the string "True" would surprise everyone.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_scalar_to_str)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=False,
        validate_default=True,
    )


class Backend(str, Enum):
    """Where instances are started: the lab (or plain processes), AWS Lambda, or Lambda emulated."""

    LOCAL = "local"
    LAMBDA = "lambda"
    LAMBDA_LOCAL = "lambda-local"


class RestartPolicy(str, Enum):
    """What happens when an instance's app exits or its agent goes silent (Compose values)."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class Metric(str, Enum):
    """The per-instance signal the autoscaler holds at `target`.

    activeConnections ~ Knative `concurrency`, connectionsPerSecond ~ Knative `rps`,
    cpu ~ HPA `averageUtilization` (percent of one instance's CPU).
    """

    ACTIVE_CONNECTIONS = "activeConnections"
    CONNECTIONS_PER_SECOND = "connectionsPerSecond"
    CPU = "cpu"


class ScalingPolicy(_Model):
    """One HPA `HPAScalingPolicy`: change by at most `value` pods or percent per `periodSeconds`."""

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_seconds: float = Field(gt=0, le=1800)


class ScalingRules(_Model):
    """One direction of HPA `behavior` (`scaleUp` or `scaleDown`), plus an AWS-style cooldown."""

    stabilization_window_seconds: float = Field(ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: tuple[ScalingPolicy, ...] = Field(min_length=1)
    # AWS target tracking ScaleOutCooldown / ScaleInCooldown: after a change in this direction,
    # no further change in this direction for this long. HPA has none, hence 0.
    cooldown_seconds: float = Field(default=0, ge=0, le=3600)


def _default_scale_up() -> ScalingRules:
    # HPA default: no stabilization, the larger of +4 pods and +100 % per 15 s.
    return ScalingRules.model_validate(
        {
            "stabilizationWindowSeconds": 0,
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        }
    )


def _default_scale_down() -> ScalingRules:
    # HPA default: 300 s stabilization (highest recommendation wins), up to -100 % per 15 s.
    return ScalingRules.model_validate(
        {
            "stabilizationWindowSeconds": 300,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        }
    )


class Behavior(_Model):
    """HPA `behavior`: separate rules for scaling up and down."""

    scale_up: ScalingRules = Field(default_factory=_default_scale_up)
    scale_down: ScalingRules = Field(default_factory=_default_scale_down)


class AutoscalePolicy(_Model):
    """How a service's instance count follows its load (Knative KPA windows + HPA behavior)."""

    metric: Metric = Metric.ACTIVE_CONNECTIONS
    target: float = Field(gt=0)
    # Knative `stable-window`: the average the count follows in normal times.
    stable_window_seconds: float = Field(default=60, ge=1, le=3600)
    # Knative `panic-window` (10 % of 60 s) and `panic-threshold-percentage`: when the short
    # average asks for this share of the ready instances, follow it and never scale down.
    panic_window_seconds: float = Field(default=6, ge=1, le=3600)
    panic_threshold_percentage: float = Field(default=200, gt=100, le=1000)
    # KEDA `activationThreshold`: at or below this service-wide value the service counts as idle.
    activation_threshold: float = Field(default=0, ge=0)
    # Knative `scale-to-zero-grace-period`: idle this long before the last instance goes.
    scale_to_zero_grace_period_seconds: float = Field(default=30, ge=0, le=86400)
    # How long a connect to a service with no instance is held while one starts (then ETIMEDOUT).
    scale_from_zero_timeout_seconds: float = Field(default=10, gt=0, le=900)
    behavior: Behavior = Field(default_factory=Behavior)


class RenderedInstance(BaseModel):
    """What a backend needs to start instance `index` of a service."""

    model_config = ConfigDict(frozen=True)

    service: str
    index: int
    name: str
    placement: Placement
    command: tuple[str, ...]
    env: dict[str, str]


class RestartBackoff(_Model):
    """`restartBackoff:`: how fast a slot whose instances keep failing is started again
    (Kubernetes CrashLoopBackOff: 10 s doubling to 300 s, reset after 10 minutes of running).

    The first failure of a slot is replaced at once (a failure is news, a loop is not); each
    further failure of an instance that ran less than `resetAfterSeconds` waits
    `initialDelaySeconds`, doubled per failure, at most `maxDelaySeconds`. Our defaults are
    ten times Kubernetes' shorter for the first delay because an instance here starts in about
    a second (a container pull takes Kubernetes' 10 s): a dependency that comes up late costs
    a second, not ten; and five times shorter for the cap, because a fixed dependency should be
    picked up within a minute, while a slot that keeps crashing still costs at most one launch
    (a paid Lambda invocation) a minute."""

    initial_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_delay_seconds: float = Field(default=60.0, gt=0, le=86400)
    # An instance that ran this long was healthy: the next failure of its slot starts over.
    reset_after_seconds: float = Field(default=30.0, ge=0, le=86400)

    def delay(self, failures: int) -> float:
        """Seconds to wait before starting a slot again after its `failures`-th quick failure
        in a row (1: at once)."""
        if failures <= 1:
            return 0.0
        return min(self.max_delay_seconds, self.initial_delay_seconds * 2.0 ** min(failures - 2, 60))


class Service(_Model):
    """One service of the deployment: the command every instance runs and how many to run."""

    command: tuple[Text, ...] = Field(min_length=1)
    env: dict[Annotated[str, StringConstraints(pattern=_ENV_NAME)], Text] = Field(
        default_factory=dict
    )
    placement: Placement = Placement.FUNCTION
    # On `function` placement: the first `baseCapacity` instances run on `vm` instead (base
    # capacity on long-running hosts, bursts above it on functions).
    base_capacity: int = Field(default=0, ge=0, le=10000)
    min_instances: int = Field(default=1, ge=0, le=10000)
    # None means "as many as minInstances (at least 1)": a fixed-size service.
    max_instances: int | None = Field(default=None, ge=1, le=10000)
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    restart_backoff: RestartBackoff = Field(default_factory=RestartBackoff)
    # Optional fixed instance names: instance i (1-based) is called hostnames[i-1].
    hostnames: tuple[HostName, ...] | None = None
    autoscale: AutoscalePolicy | None = None
    # Only meaningful on `function` placement (None there means 900 s).
    max_lifetime_seconds: float | None = Field(
        default=None, gt=0, le=LAMBDA_MAX_LIFETIME_SECONDS
    )
    renewal_margin_seconds: float = Field(default=60, gt=0, le=LAMBDA_MAX_LIFETIME_SECONDS)

    @property
    def effective_max_instances(self) -> int:
        if self.max_instances is not None:
            return self.max_instances
        return max(self.min_instances, 1)

    @property
    def lifetime_seconds(self) -> float | None:
        """The maximum lifetime of a `function` instance; None where instances live on."""
        if self.max_lifetime_seconds is not None:
            return self.max_lifetime_seconds
        if self.placement is Placement.FUNCTION:
            return LAMBDA_MAX_LIFETIME_SECONDS
        return None

    def placement_for(self, vm_instances_running: int) -> Placement:
        """Where the next instance goes, given how many of this service's instances are on vm."""
        if self.placement is Placement.VM or vm_instances_running < self.base_capacity:
            return Placement.VM
        return Placement.FUNCTION

    def instance_name(self, service: str, index: int) -> str:
        if index < 1:
            raise ValueError(f"instance index starts at 1, got {index}")
        if self.hostnames is not None and index <= len(self.hostnames):
            return self.hostnames[index - 1]
        return f"{service}-{index}"

    def render(self, service: str, index: int, placement: Placement) -> RenderedInstance:
        """The command and environment of one instance, with `{index}` and `{name}` filled in.

        Only these two exact placeholders are replaced, so other braces (an nginx config passed
        with -g, a shell snippet) pass through untouched.
        """
        name = self.instance_name(service, index)
        values = {"index": str(index), "name": name}

        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

        env = {key: fill(value) for key, value in self.env.items()}
        env["BOXER_INSTANCE_INDEX"] = str(index)
        env["BOXER_INSTANCE_NAME"] = name
        return RenderedInstance(
            service=service,
            index=index,
            name=name,
            placement=placement,
            command=tuple(fill(arg) for arg in self.command),
            env=env,
        )


class LambdaSettings(_Model):
    """`lambda:`: how `boxer up --backend lambda` reaches the deployment made by terraform."""

    # `terraform output -json` saved to a file; relative to the deployment file's folder.
    # `boxer up --outputs` and BOXER_TF_OUTPUTS take precedence.
    outputs: str | None = Field(default=None, min_length=1)
    # Invocations in flight at once (the function's share of the account's concurrency).
    max_concurrency: int = Field(default=100, ge=1, le=10000)
    # An invocation whose agent has not registered with the coordinator by then has failed
    # (Lambda cold starts of an image take a few seconds; 30 s leaves room for slow pulls).
    register_timeout_seconds: float = Field(default=30, gt=0, le=900)


class PartitionPolicy(_Model):
    """`partition:`: what to do when many instances go quiet at once (Kubernetes' node lifecycle
    controller: `--unhealthy-zone-threshold`, `--secondary-node-eviction-rate`, and no evictions
    at all when a whole zone is down).

    Deployment-wide, not per service: the coordinator, the network path to it and the Lambda
    concurrency (one function runs every service) are shared by all services, so a partition
    shows across services; a per-service share would miss one spread thinly over many small
    services and would call a 2-instance service whose agents both hang a partition.
    """

    # Instances that go quiet within this long of the first are judged together: while more
    # than one is quiet, none is replaced until this long after the first was noticed (quiet
    # notices of one event reach the controller spread over ~0.3 s: 0.2 s beats, 0.1 s checks).
    window_seconds: float = Field(default=1, ge=0, le=60)
    # K8s `unhealthyZoneThreshold` (0.55) as a percentage, like Knative's thresholds: from this
    # share of the deployment's instances quiet at once, a partition is suspected.
    quiet_threshold_percentage: float = Field(default=55, gt=0, le=100)
    # K8s needs more than 2 NotReady nodes for a zone to count as disrupted: fewer quiet
    # instances than this are always replaced at once, whatever their share.
    min_quiet_instances: int = Field(default=3, ge=2, le=10000)
    # K8s `secondaryNodeEvictionRate`: while a partition is suspected, quiet instances are
    # replaced at most this many per second (0: none).
    replacements_per_second: float = Field(default=1, ge=0, le=1000)
    # K8s stops evicting when a whole zone is down (the master is the likely problem): from
    # this share quiet, none is replaced until some are heard again.
    halt_threshold_percentage: float = Field(default=90, gt=0, le=100)


class Deployment(_Model):
    """The whole deployment file."""

    name: HostName | None = None
    backend: Backend = Backend.LOCAL
    lambda_: LambdaSettings | None = Field(default=None, alias="lambda")
    partition: PartitionPolicy = Field(default_factory=PartitionPolicy)
    services: dict[HostName, Service] = Field(min_length=1)

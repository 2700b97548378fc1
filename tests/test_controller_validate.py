"""Validation of deployment files: exact messages with file:line, path, value, what is allowed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from boxer.cli import main
from boxer.controller.errors import DeploymentFileError, Issue
from boxer.controller.validate import load_deployment, parse_deployment

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web-autoscale" / "deploy.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(DeploymentFileError) as caught:
        parse_deployment(textwrap.dedent(text), "d.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_example_is_valid() -> None:
    deployment = load_deployment(EXAMPLE)
    assert set(deployment.services) == {"web", "api"}
    api = deployment.services["api"]
    assert api.autoscale is not None and api.autoscale.target == 10
    assert api.autoscale.behavior.scale_up.policies[0].value == 12


def test_unknown_field_gets_did_you_mean_and_allowed_list() -> None:
    found = problems("""\
        services:
          web:
            command: [srv]
            autoscale:
              target: 10
              stableWindow: 30
        """)
    assert found == [
        ("d.yaml:6: services.web.autoscale.stableWindow: unknown field 'stableWindow'; did you"
         " mean 'stableWindowSeconds'? allowed here: metric, target, stableWindowSeconds,"
         " panicWindowSeconds, panicThresholdPercentage, activationThreshold,"
         " scaleToZeroGracePeriodSeconds, scaleFromZeroTimeoutSeconds, behavior")
    ]


def test_snake_case_spelling_is_matched_to_camel_case() -> None:
    found = problems("""\
        services:
          web:
            command: [srv]
            min_instances: 2
        """)
    assert found[0].startswith(
        "d.yaml:4: services.web.min_instances: unknown field 'min_instances'; did you mean"
        " 'minInstances'?")


def test_several_errors_at_once_in_file_order() -> None:
    found = problems("""\
        backend: lamda
        services:
          web:
            command: [srv]
            placement: functon
            minInstances: -1
            autoscale:
              metric: connections
              target: 0
        """)
    assert found == [
        ("d.yaml:1: backend: got 'lamda': Input should be 'local', 'lambda' or 'lambda-local';"
         " did you mean 'lambda'?"),
        ("d.yaml:5: services.web.placement: got 'functon': Input should be 'vm' or 'function';"
         " did you mean 'function'?"),
        "d.yaml:6: services.web.minInstances: got -1: Input should be greater than or equal to 0",
        ("d.yaml:8: services.web.autoscale.metric: got 'connections': Input should be"
         " 'activeConnections', 'connectionsPerSecond' or 'cpu'; did you mean 'activeConnections'?"),
        "d.yaml:9: services.web.autoscale.target: got 0: Input should be greater than 0",
    ]


def test_missing_and_wrongly_typed_fields() -> None:
    found = problems("""\
        services:
          web:
            env: {PORT: yes}
          db:
            command: redis-server
        """)
    assert found == [
        "d.yaml:2: services.web.command: required field is missing",
        ("d.yaml:3: services.web.env.PORT: got True: Input should be a valid string (YAML reads"
         " yes/no/on/off/true/false as booleans: quote the text)"),
        ("d.yaml:5: services.db.command: got 'redis-server': command is a list of arguments, not a"
         " shell line (boxer runs no shell): write `command: [redis-server]`, or `command: [sh, -c,"
         ' "redis-server"]` for pipes and $VARIABLES'),
    ]


def test_bad_names() -> None:
    found = problems("""\
        services:
          Web_1:
            command: [srv]
            env: {9LIVES: x}
        """)
    assert found == [
        ("d.yaml:2: services.Web_1: got 'Web_1': invalid name: use lowercase letters, digits and"
         " '-', not at either end, at most 63 characters (a DNS label: this name is a host name"
         " on the overlay)"),
        ("d.yaml:4: services.Web_1.env.9LIVES: got '9LIVES': not an environment variable name"
         " (use letters, digits and '_', not starting with a digit); a shell could not read it:"
         " call it '_9LIVES', say"),
    ]


def test_cross_field_messages_show_the_values() -> None:
    found = problems("""\
        services:
          web:
            command: [srv]
            placement: vm
            maxLifetimeSeconds: 300
            minInstances: 5
            maxInstances: 3
            autoscale:
              target: 120
              metric: cpu
              panicWindowSeconds: 60
              stableWindowSeconds: 30
          api:
            command: [srv]
            renewalMarginSeconds: 120
            maxLifetimeSeconds: 100
        """)
    assert found == [
        ("d.yaml:5: services.web.maxLifetimeSeconds: maxLifetimeSeconds applies to `function`"
         " placement only; this service has placement `vm`, whose instances have no lifetime"
         " limit"),
        "d.yaml:6: services.web.minInstances: minInstances (5) must be <= maxInstances (3)",
        ("d.yaml:9: services.web.autoscale.target: target 120 for metric cpu is a utilisation in"
         " percent of one instance's CPU; allowed: above 0 and at most 100"),
        ("d.yaml:11: services.web.autoscale.panicWindowSeconds: panicWindowSeconds (60) must be"
         " shorter than stableWindowSeconds (30)"),
        ("d.yaml:15: services.api.renewalMarginSeconds: renewalMarginSeconds (120) must be below"
         " the instance lifetime maxLifetimeSeconds (100), or every instance would be renewed as"
         " soon as it starts"),
    ]


def test_fixed_size_rules_and_name_clashes() -> None:
    found = problems("""\
        services:
          kv:
            command: [srv]
            minInstances: 0
          web:
            command: [srv]
            maxInstances: 3
          api:
            command: [srv]
            hostnames: [web-2, a]
            minInstances: 2
            maxInstances: 2
        """)
    assert found == [
        ("d.yaml:4: services.kv.minInstances: minInstances 0 needs an autoscale block (scaling"
         " from and to zero is part of the autoscale policy); add `autoscale:` or use"
         " minInstances >= 1"),
        ("d.yaml:7: services.web.maxInstances: maxInstances (3) is above minInstances (1) but the"
         " service has no autoscale block, so nothing would ever scale it; add `autoscale:` or"
         " set maxInstances to 1"),
        ("d.yaml:10: services.api.hostnames[0]: host name 'web-2' is used twice: by service"
         " 'web' and by service 'api'; service and instance names must be unique"),
    ]


def test_duplicate_keys_are_reported() -> None:
    found = problems("""\
        services:
          web:
            command: [a]
            command: [b]
        """)
    assert found == [
        ("d.yaml:4: services.web.command: field written twice (first on line 3); YAML keeps only"
         " the last one, so remove one of them")
    ]


def test_yaml_syntax_error_and_wrong_top_level() -> None:
    assert problems("services: [a\n") == [
        "d.yaml:2: (top level): not valid YAML: expected ',' or ']', but got '<stream end>'"
    ]
    assert problems("- a\n") == [
        "d.yaml:1: (top level): the file must be a mapping with at least `services:`; got list"
    ]
    assert problems("") == [
        ("d.yaml:1: (top level): the file must be a mapping with at least `services:`; got"
         " NoneType")
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DeploymentFileError) as caught:
        load_deployment(tmp_path / "nope.yaml")
    assert caught.value.issues[0].message == "cannot read the file: no such file or directory"


def test_error_needs_issues() -> None:
    with pytest.raises(ValueError, match="at least one issue"):
        DeploymentFileError([])
    issue = Issue("f", 3, "a.b", 1, "bad")
    assert issue.to_dict() == {"file": "f", "line": 3, "path": "a.b", "value": 1,
                               "message": "bad"}


class TestCheckCommand:
    def test_valid_file_exits_zero_with_summary(self) -> None:
        result = CliRunner().invoke(main, ["check", str(EXAMPLE)])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == f"{EXAMPLE}: valid, backend local, 2 services"
        assert lines[1].split() == ["web", "vm", "instances", "1..1", "fixed", "size"]
        assert lines[2].split() == ["api", "function", "instances", "0..40", "activeConnections",
                                    "target", "10"]

    def test_invalid_file_exits_one_without_traceback(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("services:\n  web:\n    comand: [x]\n")
        result = CliRunner().invoke(main, ["check", str(bad)])
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert result.output.splitlines() == [
            f"{bad}: 2 problems",
            f"{bad}:2: services.web.command: required field is missing",
            (f"{bad}:3: services.web.comand: unknown field 'comand'; did you mean 'command'?"
             " allowed here: command, env, placement, baseCapacity, minInstances, maxInstances,"
             " restartPolicy, restartBackoff, hostnames, autoscale, maxLifetimeSeconds, renewalMarginSeconds"),
        ]

    def test_json_output(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("services:\n  web:\n    command: [x]\n    minInstances: many\n")
        result = CliRunner().invoke(main, ["check", "-o", "json", str(bad)])
        assert result.exit_code == 1
        assert json.loads(result.output) == {"valid": False, "errors": [{
            "file": str(bad), "line": 4, "path": "services.web.minInstances", "value": "many",
            "message": ("got 'many': Input should be a valid integer, unable to parse string as"
                       " an integer"),
        }]}
        good = CliRunner().invoke(main, ["check", "-o", "json", str(EXAMPLE)])
        assert good.exit_code == 0
        assert json.loads(good.output)["services"][1] == {
            "name": "api", "placement": "function", "minInstances": 0, "maxInstances": 40,
            "autoscale": "activeConnections target 10"}


def test_partition_fields_are_checked_with_file_line_and_field() -> None:
    found = problems("""\
        partition:
          quietThreshold: 50
          replacementsPerSecond: -1
          minQuietInstances: 1
          windowSeconds: 120
        services:
          web:
            command: [srv]
        """)
    assert found == [
        ("d.yaml:2: partition.quietThreshold: unknown field 'quietThreshold'; did you mean"
         " 'quietThresholdPercentage'? allowed here: windowSeconds, quietThresholdPercentage,"
         " minQuietInstances, replacementsPerSecond, haltThresholdPercentage"),
        ("d.yaml:3: partition.replacementsPerSecond: got -1: Input should be greater than or"
         " equal to 0"),
        "d.yaml:4: partition.minQuietInstances: got 1: Input should be greater than or equal to 2",
        "d.yaml:5: partition.windowSeconds: got 120: Input should be less than or equal to 60",
    ]


def test_partition_halt_threshold_is_not_below_the_quiet_threshold() -> None:
    found = problems("""\
        services:
          web:
            command: [srv]
        partition:
          quietThresholdPercentage: 80
          haltThresholdPercentage: 60
        """)
    assert found == [
        ("d.yaml:6: partition.haltThresholdPercentage: haltThresholdPercentage (60) must be >="
         " quietThresholdPercentage (80): replacing none is the step after replacing at a"
         " limited rate")
    ]


def test_partition_defaults_follow_kubernetes() -> None:
    policy = parse_deployment("services: {web: {command: [srv]}}\n").partition
    assert (policy.quiet_threshold_percentage, policy.min_quiet_instances,
            policy.replacements_per_second, policy.halt_threshold_percentage,
            policy.window_seconds) == (55, 3, 1, 90, 1)


def test_lambda_env_may_not_set_what_would_reach_the_agent() -> None:
    """An event's env reaches the agent's own process on Lambda (docs/security.md): LD_*,
    PYTHON* and BOXER_* keys are refused with their file line and field; other keys pass."""
    deployment = """\
        backend: {backend}
        services:
          kv:
            command: [redis-server]
            env:
              MAXMEMORY: 64mb
              LD_PRELOAD: /tmp/evil.so
              PYTHONPATH: /app
              BOXER_SECRET_FILE: /etc/passwd
        """
    why = ("LD_*, PYTHON* and BOXER_* variables would reach the agent on Lambda, not just the app: set it"
           " in the command instead (e.g. `env PYTHONPATH=/app python3 app.py`)")
    assert problems(deployment.format(backend="lambda")) == [
        f"d.yaml:7: services.kv.env.LD_PRELOAD: LD_PRELOAD: {why}",
        f"d.yaml:8: services.kv.env.PYTHONPATH: PYTHONPATH: {why}",
        f"d.yaml:9: services.kv.env.BOXER_SECRET_FILE: BOXER_SECRET_FILE: {why}",
    ]
    clean = parse_deployment(textwrap.dedent(deployment.format(backend="lambda")).replace(
        "      LD_PRELOAD: /tmp/evil.so\n      PYTHONPATH: /app\n      BOXER_SECRET_FILE: /etc/passwd\n", ""), "d.yaml")
    assert clean.services["kv"].env == {"MAXMEMORY": "64mb"}


def test_the_lambda_backend_takes_vm_placement_and_base_capacity() -> None:
    """The vm tier runs them (docs/aws.md); before, both were refused with `backend: lambda`."""
    text = textwrap.dedent("""\
        backend: lambda
        services:
          web:
            command: [nginx]
            placement: vm
          api:
            command: [srv]
            baseCapacity: 2
            minInstances: 2
            maxInstances: 6
            autoscale: {target: 10}
        """)
    deployment = parse_deployment(text, "d.yaml")
    assert deployment.services["web"].placement.value == "vm"
    assert deployment.services["api"].base_capacity == 2


def test_a_file_without_services_says_what_one_looks_like() -> None:
    assert problems("services: {}\n") == [
        "d.yaml:1: services: no service: a deployment runs at least one, e.g. `services: {web: {command: [nginx]}}`"]


def _bomb(levels: int) -> str:
    """A YAML alias bomb: each anchor is a list of ten aliases of the one before."""
    lines = ['  a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "x-bomb:\n" + "\n".join(lines) + f"\nservices:\n  web:\n    command: [nginx]\n    env: {{A: *a{levels - 1}}}\n"


def test_an_alias_bomb_is_refused_at_once_not_expanded() -> None:
    """532 bytes that expand to 10^9 values: parse_deployment ran past 60 s (the walk of the
    node tree, then the schema, follow every alias), and on a controller host it ran in the event
    loop that serves the control API. Now one issue, at once."""
    import time

    started = time.monotonic()
    with pytest.raises(DeploymentFileError) as info:
        parse_deployment(_bomb(9), "bomb.yaml")
    assert time.monotonic() - started < 5
    assert str(info.value).startswith("bomb.yaml:2: (top level): not valid YAML: the file expands to more than "
                                      "100000 values (aliases of aliases?)")
    # An alias or two are YAML like any other.
    small = parse_deployment("services:\n  web: {command: &cmd [nginx, -g, daemon off;]}\n"
                             "  api: {command: *cmd}\n", "small.yaml")
    assert small.services["api"].command == small.services["web"].command == ("nginx", "-g", "daemon off;")


def test_nesting_thousands_deep_is_an_issue_not_a_recursion_error() -> None:
    with pytest.raises(DeploymentFileError, match=r"deep.yaml: \(top level\): not valid YAML: the file nests too deeply"):
        parse_deployment("services: " + "[" * 5000 + "]" * 5000, "deep.yaml")

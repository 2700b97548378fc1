"""`boxer check` on the slips people make, each with a hint that says what to write instead:
indentation one level off, Compose's forms of `command` and `env`, env names a shell cannot
read, and programs the lab would not find (a warning)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from boxer.cli import main
from boxer.controller.errors import DeploymentFileError
from boxer.controller.validate import deployment_warnings, load_deployment, parse_deployment


def problems(text: str) -> list[str]:
    with pytest.raises(DeploymentFileError) as caught:
        parse_deployment(textwrap.dedent(text), "d.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_a_field_indented_into_env_is_refused_with_dedent() -> None:
    assert problems("""\
        services:
          api:
            command: [python3, backend.py]
            env:
              DELAY_MS: "300"
              placement: function
        """) == [
        "d.yaml:6: services.api.env.placement: 'placement' is a field of the service, not an"
        " environment variable: it is indented under `env:`; dedent it to line up with `env:`"]


def test_an_env_variable_beside_env_belongs_under_it() -> None:
    assert problems("""\
        services:
          api:
            command: [python3, backend.py]
            env:
              INSTANCE_LABEL: x
            DELAY_MS: "300"
        """) == [
        "d.yaml:6: services.api.DELAY_MS: unknown field 'DELAY_MS': it looks like an environment"
        " variable, which belongs under `env:` (indent it below `env:` of this service)"]


def test_a_field_one_level_too_deep_is_named_with_its_place() -> None:
    assert problems("""\
        services:
          api:
            command: [srv]
            autoscale:
              target: 10
              minInstances: 0
        """) == [
        "d.yaml:6: services.api.autoscale.minInstances: 'minInstances' is a field of"
        " services.api, one level up: dedent it to line up with 'autoscale'"]


def test_env_names_a_shell_cannot_read_get_a_name_that_it_can() -> None:
    found = problems("""\
        services:
          db:
            command: [redis-server]
            env: {my-var: x, 2X: y}
        """)
    rule = "use letters, digits and '_', not starting with a digit"
    assert found == [
        f"d.yaml:4: services.db.env.2X: got '2X': not an environment variable name ({rule});"
        " a shell could not read it: call it '_2X', say",
        f"d.yaml:4: services.db.env.my-var: got 'my-var': not an environment variable name ({rule});"
        " a shell could not read it: call it 'MY_VAR', say"]


def test_compose_string_command_shows_the_list_to_write() -> None:
    assert problems("""\
        services:
          web:
            command: "python3 app.py --port 80 --label 'a b'"
        """) == [
        "d.yaml:3: services.web.command: got \"python3 app.py --port 80 --label 'a b'\": command is"
        " a list of arguments, not a shell line (boxer runs no shell): write `command: [python3,"
        " app.py, --port, 80, --label, \"a b\"]`, or `command: [sh, -c, \"python3 app.py --port 80"
        " --label 'a b'\"]` for pipes and $VARIABLES"]


def test_compose_list_env_shows_the_mapping_to_write() -> None:
    assert problems("""\
        services:
          web:
            command: [srv]
            env: ["A=1", "B=two words", "EMPTY="]
        """) == [
        "d.yaml:4: services.web.env: env is a mapping of NAME: value, not a list of NAME=value"
        " (Compose's list form): write `env: {A: 1, B: \"two words\", EMPTY: \"\"}`"]


def test_the_mapping_shown_is_itself_valid() -> None:
    deployment = parse_deployment('services:\n  web:\n    command: [python3, app.py, --port, 80]\n'
                                  '    env: {A: 1, B: "two words", EMPTY: ""}\n')
    assert deployment.services["web"].env == {"A": "1", "B": "two words", "EMPTY": ""}
    assert deployment.services["web"].command == ("python3", "app.py", "--port", "80")


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_commands_the_lab_would_not_find_are_warnings(tmp_path: Path) -> None:
    (tmp_path / "server").write_text("#!/bin/sh\n")
    (tmp_path / "server").chmod(0o755)
    path = _file(tmp_path, """\
        services:
          api:
            command: [pythn3, backend.py]
          web:
            command: [./server]
          gone:
            command: [./missing]
          own:
            command: [tool]
            env: {PATH: /nowhere}
          ok:
            command: [sh, -c, "exit 0"]
        """)
    warnings = [str(w) for w in deployment_warnings(path, load_deployment(path), "/usr/bin:/bin")]
    assert warnings == [
        f"{path}:3: services.api.command[0]: command 'pythn3': not found on the PATH instances get"
        " (that of `boxer up`); did you mean 'python3'? (instances would exit with status 127)",
        f"{path}:7: services.gone.command[0]: command './missing': no executable file"
        f" {tmp_path}/missing (instances would exit with status 127)",
        f"{path}:9: services.own.command[0]: command 'tool': not found on its env PATH (instances"
        " would exit with status 127)"]
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: " + warnings[0].replace("/usr/bin:/bin", "") in result.output
    assert f"{path}: valid, backend local, 5 services" in result.output
    shown = json.loads(CliRunner().invoke(main, ["check", "-o", "json", str(path)]).stdout)
    assert [w["path"] for w in shown["warnings"]] == ["services.api.command[0]",
                                                       "services.gone.command[0]",
                                                       "services.own.command[0]"]


def test_no_command_warnings_for_the_lambda_backend(tmp_path: Path) -> None:
    path = _file(tmp_path, "backend: lambda\nservices:\n  api:\n    command: [only-in-the-image]\n")
    assert deployment_warnings(path, load_deployment(path), "/usr/bin") == []


def test_one_service_is_one_service(tmp_path: Path) -> None:
    path = _file(tmp_path, "services:\n  api:\n    command: [sh]\n")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.output.splitlines()[0] == f"{path}: valid, backend local, 1 service"

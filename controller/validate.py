"""Load and check a deployment file; every problem is reported with file:line, field and value.

Two stages, as in SkyPilot's service spec: first the schema (pydantic: types, ranges, allowed
values, unknown fields with a "did you mean"), then cross-field rules (`boxer.controller.checks`),
which only run on a file that passed the first stage. All issues of a stage are reported at once.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shlex
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from boxer.controller._yaml import Located, load_with_lines
from boxer.controller.checks import command_warnings, cross_field_issues
from boxer.controller.errors import DeploymentFileError, Issue
from boxer.controller.spec import _DNS_LABEL, _ENV_NAME, Backend, Deployment

__all__ = ["deployment_warnings", "load_deployment", "parse_deployment"]

log = logging.getLogger(__name__)

_LocPart = str | int

# Regex errors are unreadable as such; say what the pattern means.
_PATTERN_HELP = {
    _DNS_LABEL: "use lowercase letters, digits and '-', not at either end, at most 63 characters"
    " (a DNS label: this name is a host name on the overlay)",
    _ENV_NAME: "use letters, digits and '_', not starting with a digit",
}


def load_deployment(path: str | Path, *, backend: str | None = None) -> Deployment:
    """Read and validate a deployment file; raises DeploymentFileError listing every problem.

    `backend` overrides the file's `backend` (`boxer up --backend`) before the checks across
    fields, so rules that depend on the backend see the one that will run."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = (f"{exc.strerror.lower()}" if isinstance(exc, OSError) and exc.strerror
               else f"not UTF-8 text ({exc})" if isinstance(exc, UnicodeDecodeError) else str(exc))
        raise DeploymentFileError(
            [Issue(str(path), None, "", None, f"cannot read the file: {why}")]
        ) from None
    return parse_deployment(text, str(path), backend=backend)


def parse_deployment(text: str, filename: str = "<deployment>", *,
                     backend: str | None = None) -> Deployment:
    """Validate deployment file text; `filename` only appears in messages."""
    try:
        located = load_with_lines(text)
    except yaml.YAMLError as exc:
        raise DeploymentFileError([_yaml_issue(exc, filename)]) from None

    issues = [
        Issue(
            filename,
            again,
            _dotted(path),
            path[-1],
            f"field written twice (first on line {first}); YAML keeps only the last one, so"
            " remove one of them",
        )
        for path, first, again in located.duplicate_keys
    ]
    if not isinstance(located.data, dict):
        issues.append(
            Issue(
                filename,
                located.line_of(()),
                "",
                _shorten(located.data),
                "the file must be a mapping with at least `services:`; got "
                f"{type(located.data).__name__}",
            )
        )
        raise DeploymentFileError(issues)
    try:
        deployment = Deployment.model_validate(located.data)
    except ValidationError as exc:
        errors = _without_echoes(exc.errors())
        issues.extend(_schema_issue(error, located, filename) for error in errors)
        raise DeploymentFileError(_in_file_order(issues)) from None
    if backend is not None:
        deployment = deployment.model_copy(update={"backend": Backend(backend)})
    issues.extend(
        Issue(filename, located.line_of(path), _dotted(path), value, message)
        for path, value, message in cross_field_issues(deployment)
    )
    if issues:
        raise DeploymentFileError(_in_file_order(issues))
    log.debug("deployment file %s is valid: %d services", filename, len(deployment.services))
    return deployment


def deployment_warnings(path: str | Path, deployment: Deployment, search_path: str | None = None) -> list[Issue]:
    """What is valid but will likely fail when it runs (a command the lab would not find), with
    file:line like the errors. `search_path`: the PATH instances get (default: ours)."""
    path = Path(path)
    try:
        located = load_with_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    found = command_warnings(deployment, path.resolve().parent,
                             os.environ.get("PATH") if search_path is None else search_path)
    return [Issue(str(path), located.line_of(where), _dotted(where), value, message)
            for where, value, message in found]


def _without_echoes(errors: list[Any]) -> list[Any]:
    """Drop a list's "too short" error when it only echoes failures of its own items."""
    locs = [tuple(error["loc"]) for error in errors]

    def echoes(error: Any) -> bool:
        loc = tuple(error["loc"])
        return error["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in locs
        )

    return [error for error in errors if not echoes(error)]


def _in_file_order(issues: list[Issue]) -> list[Issue]:
    return sorted(issues, key=lambda issue: (issue.line or 0, issue.path))


def _yaml_issue(exc: yaml.YAMLError, filename: str) -> Issue:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    return Issue(filename, line, "", None, f"not valid YAML: {problem}")


def _schema_issue(error: Any, located: Located, filename: str) -> Issue:
    loc: tuple[_LocPart, ...] = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return Issue(
            filename,
            located.line_of(loc),
            _dotted(loc),
            _shorten(value),
            _misplaced_hint(loc) or _unknown_field_message(str(loc[-1]), _field_names(loc[:-1])),
        )
    compose_hint = _compose_form_hint(loc, kind, value)
    if compose_hint:
        return Issue(filename, located.line_of(loc), _dotted(loc), _shorten(value), compose_hint)
    if kind == "missing":
        return Issue(
            filename,
            located.line_of(loc),
            _dotted(loc),
            None,
            "required field is missing",
        )
    if kind == "too_short" and loc == ("services",):
        return Issue(filename, located.line_of(loc), "services", _shorten(value),
                     "no service: a deployment runs at least one, e.g. `services: {web: {command: [nginx]}}`")
    # Dict-key errors come as (..., key, "[key]"): report them on the key itself.
    key_error = bool(loc) and loc[-1] == "[key]"
    path = loc[:-1] if key_error else loc
    message = error["msg"].replace("a valid tuple", "a list")
    if kind == "string_pattern_mismatch":
        message = _PATTERN_HELP.get(error["ctx"]["pattern"], message)
    if isinstance(value, bool):
        message += " (YAML reads yes/no/on/off/true/false as booleans: quote the text)"
    if key_error and len(path) >= 2 and path[-2] == "env" and isinstance(value, str):
        fixed = re.sub(r"[^A-Za-z0-9_]", "_", value)
        fixed = f"_{fixed}" if fixed[:1].isdigit() else fixed
        message = (f"not an environment variable name ({_PATTERN_HELP[_ENV_NAME]}); a shell could"
                   f" not read it: call it {fixed.upper()!r}, say")
    elif key_error:
        message = f"invalid name: {message}"
    suggestion = _value_suggestion(loc, value)
    if suggestion:
        message += f"; did you mean {suggestion!r}?"
    return Issue(
        filename,
        located.line_of(path),
        _dotted(path),
        _shorten(value),
        f"got {_shorten(value)!r}: {message}",
    )


def _misplaced_hint(loc: tuple[_LocPart, ...]) -> str | None:
    """An unknown field that is known one level up (indented too deep), or an environment
    variable written beside `env:` instead of under it (indented too little)."""
    key = str(loc[-1])
    if len(loc) >= 3 and key in _field_names(loc[:-2]) and key not in _field_names(loc[:-1]):
        parent = _dotted(loc[:-2]) or "the top level"
        return (f"{key!r} is a field of {parent}, one level up: dedent it to line up with"
                f" {str(loc[-2])!r}")
    if len(loc) == 3 and loc[0] == "services" and _ENV_VAR_LIKE.match(key):
        return (f"unknown field {key!r}: it looks like an environment variable, which belongs"
                " under `env:` (indent it below `env:` of this service)")
    return None


# How environment variables are usually spelled (upper case); a service field never is.
_ENV_VAR_LIKE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _yaml_flow(item: str) -> str:
    """One list item or value as it reads in YAML flow style, quoted only where it must be."""
    plain = re.fullmatch(r"[A-Za-z0-9_./:=+@%-]+", item) and item[0] not in ":@%" and item != "-"
    return item if plain else json.dumps(item)


def _compose_form_hint(loc: tuple[_LocPart, ...], kind: str, value: object) -> str | None:
    """Docker Compose allows `command: "python3 app.py"` and `env` as a list of NAME=value; we
    take neither (no shell runs the command, and a list of strings hides typos in names), so
    show the form to write instead, made from what the user wrote."""
    if len(loc) != 3 or loc[0] != "services":
        return None
    if loc[2] == "command" and isinstance(value, str) and kind in ("tuple_type", "list_type"):
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        form = "[" + ", ".join(_yaml_flow(w) for w in words) + "]"
        return (f"got {value!r}: command is a list of arguments, not a shell line (boxer runs no"
                f" shell): write `command: {form}`, or `command: [sh, -c, {json.dumps(value)}]`"
                " for pipes and $VARIABLES")
    if loc[2] == "env" and isinstance(value, list) and kind == "dict_type":
        pairs = [str(item).partition("=") for item in value]
        form = "{" + ", ".join(f"{name}: {_yaml_flow(text)}" for name, _, text in pairs) + "}"
        return (f"env is a mapping of NAME: value, not a list of NAME=value (Compose's list"
                f" form): write `env: {form}`")
    return None


def _unknown_field_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    # Also catch case and separator slips (stable_window_seconds, StableWindowSeconds).
    if not close:
        squashed = {name.lower(): name for name in allowed}
        hit = squashed.get(key.replace("_", "").replace("-", "").lower())
        close = [hit] if hit else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(allowed) if allowed else "(none)"
    return f"unknown field {key!r}{hint} allowed here: {listing}"


def _field_names(loc: tuple[_LocPart, ...]) -> list[str]:
    model = _type_at(loc)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [info.alias or name for name, info in model.model_fields.items()]
    return []


def _value_suggestion(loc: tuple[_LocPart, ...], value: object) -> str | None:
    if not isinstance(value, str):
        return None
    annotation = _type_at(loc)
    choices: list[str] = []
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = [str(member.value) for member in annotation]
    elif typing.get_origin(annotation) is typing.Literal:
        choices = [str(arg) for arg in typing.get_args(annotation)]
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    return close[0] if close and close[0] != value else None


def _type_at(loc: tuple[_LocPart, ...]) -> Any:
    """The declared type at a pydantic error location, walking models, dicts and tuples."""
    current: Any = Deployment
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (info for name, info in current.model_fields.items() if (info.alias or name) == part),
                None,
            )
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is tuple:
            current = typing.get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that matters."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _dotted(path: tuple[_LocPart, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _shorten(value: object, limit: int = 60) -> object:
    """Keep huge values (a whole mapping) out of one-line messages."""
    if isinstance(value, (dict, list)) and len(repr(value)) > limit:
        return f"{type(value).__name__} of {len(value)} items"
    return value

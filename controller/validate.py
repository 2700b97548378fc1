"""Load and check a deployment file; every problem is reported with file:line, field and value.

Two stages, as in SkyPilot's service spec: first the schema (pydantic: types, ranges, allowed
values, unknown fields with a "did you mean"), then cross-field rules (`boxer.controller.checks`),
which only run on a file that passed the first stage. All issues of a stage are reported at once.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from boxer.controller._yaml import Located, load_with_lines
from boxer.controller.checks import cross_field_issues
from boxer.controller.errors import DeploymentFileError, Issue
from boxer.controller.spec import _DNS_LABEL, _ENV_NAME, Backend, Deployment

__all__ = ["load_deployment", "parse_deployment"]

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
        raise DeploymentFileError(
            [Issue(str(path), None, "", None, f"cannot read the file: {exc}")]
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
            _unknown_field_message(str(loc[-1]), _field_names(loc[:-1])),
        )
    if kind == "missing":
        return Issue(
            filename,
            located.line_of(loc),
            _dotted(loc),
            None,
            "required field is missing",
        )
    # Dict-key errors come as (..., key, "[key]"): report them on the key itself.
    key_error = bool(loc) and loc[-1] == "[key]"
    path = loc[:-1] if key_error else loc
    message = error["msg"].replace("a valid tuple", "a list")
    if kind == "string_pattern_mismatch":
        message = _PATTERN_HELP.get(error["ctx"]["pattern"], message)
    if isinstance(value, bool):
        message += " (YAML reads yes/no/on/off/true/false as booleans: quote the text)"
    if key_error:
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

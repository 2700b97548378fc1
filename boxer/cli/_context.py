"""The current deployment and lab, as kubectl's current context: which one a command means when
it is not told.

Kept per user, not per machine (`~/.config/boxer/context.json`, or $BOXER_CONFIG_DIR): on a
shared machine two people's deployments and labs sit side by side under /run/boxer, and a bare
`boxer down` must act on what *this* person brought up, never on someone else's. `boxer up` and
`boxer lab up` set it, `boxer use` changes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["context_file", "current", "set_current"]

CONFIG_ENV = "BOXER_CONFIG_DIR"


def context_file() -> Path:
    base = os.environ.get(CONFIG_ENV) or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "boxer")
    return Path(base) / "context.json"


def _read() -> dict[str, str]:
    try:
        data = json.loads(context_file().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def current(kind: str) -> str | None:
    """The current `deployment` or `lab`, or None when none was set."""
    return _read().get(kind)


def set_current(kind: str, name: str | None) -> None:
    """Make `name` the current `kind` (None forgets it). Best effort: a read-only home must not
    make `boxer up` fail."""
    data = _read()
    if name is None:
        data.pop(kind, None)
    else:
        data[kind] = name
    path = context_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass

"""Handing the instance's token to the agent inside a function, as a file.

The function never holds the deployment secret: the controller issues each instance its token
(bound to its instance id) and sends it in the invocation's event. The handler writes it to a
fresh 0600 file in a private directory under /tmp (the only writable place on Lambda), whose
path the agent reads from BOXER_INSTANCE_TOKEN_FILE: the token is on no command line
(/proc/*/cmdline) and in no log line, and the file does not outlive the invocation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["TokenFile"]


class TokenFile:
    """A 0600 file holding the instance's token in a private 0700 directory, removed on exit.

    Lambda reuses warm environments, so the file must not outlive the invocation.
    """

    def __init__(self, token: str, *, parent: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="boxer-token-", dir=parent)  # mode 0700
        self.path = Path(self._dir) / "token"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")

    def remove(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TokenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

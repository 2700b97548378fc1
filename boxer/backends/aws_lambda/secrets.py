"""Reading the deployment secret inside a function, and handing it to the agent as a file.

The secret never goes on a command line (visible in /proc/*/cmdline) nor into a log line:
it is read from SSM Parameter Store or Secrets Manager (boto3, imported only here and only when
needed) and written to a fresh 0600 file under /tmp, the only writable place on Lambda. The
agent reads it from BOXER_SECRET_FILE.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from boxer.backends.aws_lambda.event import SecretRef
from boxer.backends.errors import SecretError

__all__ = ["ALLOW_FILE_SECRET_ENV", "SecretFile", "read_secret"]

log = logging.getLogger(__name__)

# Set by the local Lambda runner only: on AWS a secret baked into the image is a mistake.
ALLOW_FILE_SECRET_ENV = "BOXER_ALLOW_FILE_SECRET"
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_MIN_HEX_CHARS = 32  # 128 bits; anything shorter is a misconfiguration, not a secret


def read_secret(ref: SecretRef, *, client_factory: Any = None) -> str:
    """The deployment secret (hex) named by `ref`. SecretError says what failed, never the value.

    `client_factory(service_name)` builds an AWS client; the default is boto3's, with the
    standard credential chain and region (AWS_REGION is set inside Lambda).
    """
    if ref.kind == "file":
        value = _read_file(ref.location)
    else:
        value = _read_aws(ref, client_factory or _boto3_client)
    value = value.strip()
    if not _HEX.match(value) or len(value) < _MIN_HEX_CHARS:
        raise SecretError(
            f"the secret in {ref.kind} {ref.location!r} is not hex of at least "
            f"{_MIN_HEX_CHARS} characters (got {len(value)} characters)"
        )
    return value


def _read_file(path: str) -> str:
    if os.environ.get(ALLOW_FILE_SECRET_ENV) != "1":
        raise SecretError(
            f"a file secret ({path!r}) is only accepted by the local Lambda "
            f"({ALLOW_FILE_SECRET_ENV}=1); on AWS use ssm_parameter or secretsmanager_arn"
        )
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read secret file {path!r}: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def _boto3_client(service: str) -> Any:
    import boto3  # lazily: only functions reading from AWS pay for it

    return boto3.client(service)


def _read_aws(ref: SecretRef, client_factory: Any) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if ref.kind == "ssm_parameter":
            reply = client_factory("ssm").get_parameter(Name=ref.location, WithDecryption=True)
            return str(reply["Parameter"]["Value"])
        reply = client_factory("secretsmanager").get_secret_value(SecretId=ref.location)
        if "SecretString" not in reply:
            raise SecretError(f"secret {ref.location!r} holds binary data, expected a hex string")
        return str(reply["SecretString"])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SecretError(
            f"cannot read {ref.kind} {ref.location!r}: {error.get('Code', '?')}: "
            f"{error.get('Message', '')}"
        ) from None
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable...
        raise SecretError(f"cannot read {ref.kind} {ref.location!r}: {exc}") from None


class SecretFile:
    """A 0600 file holding the secret in a private 0700 directory, removed on exit.

    Lambda reuses warm environments, so the file must not outlive the invocation.
    """

    def __init__(self, secret: str, *, parent: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="boxer-secret-", dir=parent)  # mode 0700
        self.path = Path(self._dir) / "secret"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")

    def remove(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SecretFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

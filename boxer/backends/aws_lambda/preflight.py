"""What `boxer up --backend lambda` checks before it starts anything, and the controller reuses.

    path = outputs_path(cli_value, os.environ, deployment.lambda_, file_dir)
    facts = load_facts(path)                       # terraform output -json
    secret = read_deployment_secret(facts)         # SSM SecureString, standard credential chain
    check_function(facts)                          # the function exists, we may see it
    await check_coordinator(facts.coordinator_address, secret)   # reachable, same secret

Every failure is a SetupError whose message is one line: what was wrong and how to fix it.
The secret is never part of a message, a log line, a command line or the environment.
boto3 is imported only here and only when called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from boxer.backends.aws_lambda.facts import LambdaFacts
from boxer.backends.errors import BackendError, FactsError

__all__ = [
    "DEFAULT_REGISTER_TIMEOUT",
    "OUTPUTS_ENV",
    "SetupError",
    "aws_client",
    "check_coordinator",
    "check_function",
    "load_facts",
    "outputs_path",
    "preflight",
    "read_deployment_secret",
    "read_deployment_secret_async",
]

OUTPUTS_ENV = "BOXER_TF_OUTPUTS"
# An invocation whose agent has not registered by then is reported failed (LambdaSettings).
DEFAULT_REGISTER_TIMEOUT = 30.0
_POLICY_HINT = ("attach the controller_policy_arn output to the user or role running boxer "
                "(examples/aws/README.md, step 2)")
_CREDENTIALS_HINT = ("configure them with `aws configure` or `aws sso login`, or set "
                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                     "KMSAccessDeniedException", "AuthorizationErrorException"})
_BAD_CREDENTIALS = frozenset({"UnrecognizedClientException", "InvalidClientTokenId",
                              "ExpiredTokenException", "ExpiredToken",
                              "InvalidSignatureException", "SignatureDoesNotMatch"})


class SetupError(BackendError):
    """The lambda backend cannot start: the message says what is wrong and how to fix it."""


def outputs_path(cli_value: str | Path | None, environ: Mapping[str, str],
                 file_value: str | None, base_dir: Path) -> Path:
    """Where the terraform outputs are: --outputs, else $BOXER_TF_OUTPUTS, else `lambda.outputs`
    in the deployment file (relative to its folder)."""
    if cli_value:
        return Path(cli_value)
    if environ.get(OUTPUTS_ENV):
        return Path(environ[OUTPUTS_ENV])
    if file_value:
        path = Path(file_value).expanduser()
        return path if path.is_absolute() else base_dir / path
    raise SetupError(
        "the lambda backend needs the deployment's terraform outputs: run `terraform -chdir="
        "terraform output -json > outputs.json`, then pass --outputs outputs.json (or set "
        f"{OUTPUTS_ENV}, or `lambda: {{outputs: outputs.json}}` in the deployment file)")


def load_facts(path: str | Path) -> LambdaFacts:
    try:
        return LambdaFacts.load(path)
    except FactsError as exc:
        raise SetupError(f"{exc}; write it with `terraform -chdir=terraform output -json > "
                         f"{Path(path).name}` after `terraform apply`") from None


ClientFactory = Callable[[str, str], Any]  # (service, region) -> boto3 client


def aws_client(service: str, region: str) -> Any:
    """A boto3 client with the standard credential chain (and AWS_ENDPOINT_URL_<SERVICE>),
    short timeouts and one retry, so a broken network fails in seconds, not minutes."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SetupError("the lambda backend needs boto3: pip install 'boxer[aws]'") from None
    config = Config(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2})
    return boto3.session.Session().client(service, region_name=region, config=config)


def _explain(exc: Exception, what: str, region: str) -> SetupError:
    """One line for a botocore failure of `what` ("read SSM parameter /x")."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SetupError(f"cannot {what}: no AWS credentials found ({exc}); "
                          f"{_CREDENTIALS_HINT}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return SetupError(f"cannot {what}: AWS in {region} is unreachable ({exc}); check the "
                          "network (and AWS_ENDPOINT_URL_* if you set one)")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "?")), _one_line(str(error.get("Message", "")))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code.isdigit():  # an answer botocore could not parse: say what we know
            code = f"HTTP {code}"
        if code in _DENIED or (status == 403 and code.startswith("HTTP")):
            return SetupError(f"not allowed to {what} ({code}): {_POLICY_HINT}")
        if code in _BAD_CREDENTIALS:
            return SetupError(f"cannot {what}: AWS rejected the credentials ({code}: "
                              f"{message}); {_CREDENTIALS_HINT}")
        return SetupError(f"cannot {what}: {code}: {message}")
    return SetupError(f"cannot {what}: {_one_line(str(exc))}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_deployment_secret(facts: LambdaFacts, client_factory: ClientFactory = aws_client,
                           outputs: str | Path = "outputs.json") -> bytes:
    """The deployment secret from its SSM SecureString parameter, as bytes."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = client_factory("ssm", facts.region).get_parameter(Name=facts.secret_parameter_name,
                                                                   WithDecryption=True)
    except (ClientError, BotoCoreError) as exc:
        raise _secret_read_failed(facts, exc, outputs) from None
    return _secret_from_reply(facts, reply)


async def read_deployment_secret_async(facts: LambdaFacts, outputs: str | Path = "outputs.json",
                                      client: Any = None, parameter: str | None = None) -> bytes:
    """As read_deployment_secret, through aiobotocore, on the caller's loop: what the controller
    does at start (its other AWS calls, Invoke and EC2, are aiobotocore too). The same checks and
    the same one-line errors. `client`: an aiobotocore SSM client (tests), else one is made.
    `parameter`: another SecureString of hex read the same way (the vm hosts' token)."""
    if parameter is not None:
        facts = replace(facts, secret_parameter_name=parameter)
    try:
        from aiobotocore.session import get_session
    except ImportError:
        raise SetupError("the lambda backend needs aiobotocore: pip install 'boxer[aws]'") from None
    if client is not None:
        return await _read_secret_with(client, facts, outputs)
    from aiobotocore.config import AioConfig

    config = AioConfig(connect_timeout=5, read_timeout=10, retries={"total_max_attempts": 2})
    async with get_session().create_client("ssm", region_name=facts.region, config=config) as made:
        return await _read_secret_with(made, facts, outputs)


async def _read_secret_with(client: Any, facts: LambdaFacts, outputs: str | Path) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = await client.get_parameter(Name=facts.secret_parameter_name, WithDecryption=True)
    except (ClientError, BotoCoreError) as exc:
        raise _secret_read_failed(facts, exc, outputs) from None
    return _secret_from_reply(facts, reply)


def _secret_read_failed(facts: LambdaFacts, exc: Exception, outputs: str | Path) -> SetupError:
    """The one line for a GetParameter that failed (either client: botocore's errors are both's)."""
    from botocore.exceptions import ClientError

    name = facts.secret_parameter_name
    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
        return SetupError(f"SSM parameter {name} does not exist in {facts.region}: is {outputs} from"
                          " this deployment (terraform apply done, not yet destroyed)?")
    return _explain(exc, f"read SSM parameter {name} in {facts.region}", facts.region)


def _secret_from_reply(facts: LambdaFacts, reply: Any) -> bytes:
    """The secret a GetParameter reply holds, checked as load_secret checks a file's."""
    from boxer.nat_traversal.auth import SecretError as BadSecret
    from boxer.nat_traversal.auth import load_secret

    value = str(reply.get("Parameter", {}).get("Value", ""))
    try:
        return load_secret(None, value.strip())
    except BadSecret as exc:  # its messages never show the value
        raise SetupError(f"SSM parameter {facts.secret_parameter_name} does not hold a usable secret:"
                         f" {exc}") from None


def check_function(facts: LambdaFacts, client_factory: ClientFactory = aws_client,
                   outputs: str | Path = "outputs.json") -> dict[str, Any]:
    """The function's configuration (GetFunctionConfiguration): it exists, and we may see it."""
    from botocore.exceptions import BotoCoreError, ClientError

    what = f"look up Lambda function {facts.function_name} in {facts.region}"
    try:
        reply: dict[str, Any] = client_factory("lambda", facts.region).get_function_configuration(
            FunctionName=facts.function_name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise SetupError(f"Lambda function {facts.function_name} does not exist in "
                             f"{facts.region}: is {outputs} from this deployment (terraform "
                             "apply done, not yet destroyed)?") from None
        raise _explain(exc, what, facts.region) from None
    except BotoCoreError as exc:
        raise _explain(exc, what, facts.region) from None
    return reply


def concurrency_limit(facts: LambdaFacts, client_factory: ClientFactory = aws_client
                      ) -> tuple[int | None, str]:
    """How many invocations of the function AWS lets run at once, and where that comes from:
    its reserved concurrency, else what the account leaves unreserved. (None, why) when we may
    not look (those are separate permissions: lambda:GetFunctionConcurrency and
    lambda:GetAccountSettings), so the caller keeps its own limit."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client_factory("lambda", facts.region)
    try:
        reserved = client.get_function_concurrency(FunctionName=facts.function_name)
    except (ClientError, BotoCoreError) as exc:
        return None, f"could not read the function's reserved concurrency ({_one_line(str(exc), 120)})"
    if reserved.get("ReservedConcurrentExecutions") is not None:
        return int(reserved["ReservedConcurrentExecutions"]), "the function's reserved concurrency"
    try:
        account = client.get_account_settings()
    except (ClientError, BotoCoreError) as exc:
        return None, f"could not read the account's concurrency ({_one_line(str(exc), 120)})"
    unreserved = account.get("AccountLimit", {}).get("UnreservedConcurrentExecutions")
    if unreserved is None:
        return None, "the account settings name no unreserved concurrency"
    return int(unreserved), "the account's unreserved concurrency"


def effective_concurrency(configured: int, limit: int | None, source: str,
                          function_name: str) -> tuple[int, str | None]:
    """The controller's number of concurrency slots: `lambda.maxConcurrency`, lowered to what AWS
    allows, and a note for the user when it was. A function that may run nothing is an error:
    every invocation would be throttled."""
    if limit is None or limit >= configured:
        return configured, None
    if limit <= 0:
        raise SetupError(f"Lambda function {function_name} may run no invocation at all ({source} "
                         "is 0): every invocation is throttled. Raise it (terraform variable "
                         "reserved_concurrency, -1 for the account's pool) and apply")
    return limit, (f"lambda.maxConcurrency {configured} lowered to {limit}: {source} (more "
                   "invocations would only be throttled)")


async def check_coordinator(address: str, secret: bytes, timeout: float = 5.0) -> None:
    """Open (and close) a watching session with the coordinator, as the controller will."""
    from boxer.agent.control import CoordinatorError, open_controller_session, parse_endpoint

    try:
        framed, _ = await open_controller_session(parse_endpoint(address), secret, timeout)
    except CoordinatorError as exc:
        text = str(exc)
        if "refused" in text or "does not hold" in text:
            hint = ("the deployment secret in SSM and the coordinator's differ: was the "
                    "coordinator restarted from another deployment?")
        else:
            hint = ("is the coordinator instance running (terraform output "
                    "coordinator_instance_id), and is your address in coordinator_allowed_cidrs?")
        raise SetupError(f"{text}; {hint}") from None
    framed.close()


def preflight(facts: LambdaFacts, outputs: str | Path,
              client_factory: ClientFactory = aws_client) -> bytes:
    """Every check, in the order a user fixes them; the secret for the caller."""
    secret = read_deployment_secret(facts, client_factory, outputs)
    check_function(facts, client_factory, outputs)
    asyncio.run(check_coordinator(facts.coordinator_address, secret))
    return secret

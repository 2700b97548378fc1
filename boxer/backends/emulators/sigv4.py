"""Checking a request's AWS Signature Version 4, as Lambda does, so that the local Invoke API
runs nothing for a caller that does not hold its credentials (any local user can reach
127.0.0.1:9001, and an invocation runs code as the server's user, root in the lab).

The signature is recomputed with botocore's own signer over exactly the headers the client
signed, and compared in constant time. Only the signature and the key id are checked: the
clock skew and the credential scope's date are not (a replay needs the loopback traffic, which
only root sees).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

__all__ = ["signed_by"]

_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$")


def signed_by(method: str, path: str, headers: Mapping[str, str], body: bytes,
              access_key: str, secret_key: str) -> str | None:
    """None if the request is signed with (access_key, secret_key); otherwise why not."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTHORIZATION.match(lower.get("authorization", ""))
    if match is None:
        return "the request is not signed (AWS Signature Version 4)"
    if not hmac.compare_digest(match["key"], access_key):
        return "the request is signed with another access key"
    signed = match["headers"].split(";")
    if "x-amz-date" not in lower or any(name not in lower for name in signed):
        return "the request lacks a header it says it signed"
    request = AWSRequest(method=method, url=f"http://{lower.get('host', 'localhost')}{path}", data=body,
                         headers={name: lower[name] for name in signed})
    request.context["timestamp"] = lower["x-amz-date"]
    signer = SigV4Auth(Credentials(access_key, secret_key), match["service"], match["region"])
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match["signature"]):
        return "the signature does not match (wrong secret key, or the request was altered)"
    return None

"""The agent's start-up probe of what the kernel and sandbox allow (boxer.agent.features) and the
report `boxer probe-lambda` prints; the sandbox that refuses them is tests/test_lambda_image_run.py."""

from __future__ import annotations

import errno

from boxer.agent import features
from boxer.backends.aws_lambda.handler import PROBE_KEY, make_handler
from boxer.cli.probe import probe_table


def test_a_failing_call_is_a_missing_feature_named_by_its_errno():
    def no_such_call() -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    feature = features._probe("pidfd_open", "a thread waits for the app", no_such_call)
    assert feature == features.Feature("pidfd_open", False, "ENOSYS", "a thread waits for the app")
    assert features._probe("x", "-", lambda: None).ok


def test_every_feature_boxer_relies_on_is_probed():
    found = features.detect()
    assert [f.name for f in found.items] == [
        "pidfd_open", "close_range", "sock_diag", "SO_REUSEPORT", "PR_SET_CHILD_SUBREAPER", "splice",
        "SCM_RIGHTS", "TCP_INFO", "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    # this machine's kernel (Linux >= 5.9) has them all; a sandbox that lacks one is tested elsewhere
    assert found.missing == []
    assert found.pidfd and found.sock_diag and found.reuseport


def test_the_probe_invocation_reports_the_sandbox_and_its_table_names_each_fallback():
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 60_000

    report = make_handler()({PROBE_KEY: {}}, Context())
    assert set(report) >= {"kernel", "uid", "limits", "tmp", "features", "ld_preload", "nat", "seccomp"}
    assert report["nat"] is None and report["ld_preload"]["ok"] is True
    report["features"]["SO_REUSEPORT"] = {"name": "SO_REUSEPORT", "ok": False, "detail": "ENOPROTOOPT",
                                          "fallback": "no hole punching: every connection through the relay"}
    table = probe_table(report)
    assert "SO_REUSEPORT            NO (ENOPROTOOPT): no hole punching: every connection through the relay" in table
    assert "NAT                     not probed (no coordinator)" in table

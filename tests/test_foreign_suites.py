"""Other projects' tests and real clients, run plain and under `boxer run` in a lab (issue 12).

Each is run twice, the same way: plain, then with boxer, and the two results are compared; a
test that passes plain and fails wrapped fails here with its name.

  * CPython's socket tests (`test_socket`, `test_selectors`, `test_asyncio.test_sock_lowlevel`,
    Debian's libpython3.11-testsuite, the system /usr/bin/python3.11): the socket API's edge
    cases on loopback, IPv6, Unix sockets, socketpair, fd passing, timeouts, non-blocking calls
    and the event loops. Twice: as shipped (their host is localhost: under boxer all of it must
    behave as without, the interposer passing what is not the overlay to libc), and with their
    host set to the host's own address (tests/apps_data/cpython_own_host.py: plain, the lab
    address; wrapped, the overlay address, so that every TCP test binds, listens, accepts and
    connects through the overlay's path to the instance itself). Run in a UTS namespace of their
    own (test_sethostname sets the host name). Expected differences, each with its reason:
    CPYTHON_EXPECTED, CPYTHON_OWN_ADDRESS_EXPECTED. AF_VSOCK tests hang on these VMs even plain:
    left out of both runs.
  * redis-benchmark against redis-server across two NATs: 50 clients on 2 threads connect at
    once (non-blocking connects in hiredis's event loop) and run every standard test. Plain,
    through a port forward on the server's router; wrapped, by overlay name. Compared: the set
    of tests that completed, and every one with all its requests answered.
  * iperf3 (TCP, 4 parallel streams each way, --bidir): a control connection, then eight data
    connections that the server matches to the test by a cookie, select() on all of them, and
    both ends report the addresses they see (getsockname/getpeername). Compared: the same
    number of streams, data both ways; wrapped, both ends name each other's overlay address.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import re
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from labkit import boxer_run, stop_all, wait_for

pytestmark = pytest.mark.lab
DATA = Path(__file__).parent / "apps_data"

SYSTEM_PYTHON = "/usr/bin/python3.11"
CPYTHON_SUITES = ["test_socket", "test_selectors", "test_asyncio.test_sock_lowlevel"]
# Hang on these VMs even plain (no vsock device behind AF_VSOCK): out of both runs.
CPYTHON_LEFT_OUT = ["*VSOCK*", "*Vsock*"]
# Tests that pass plain and are expected to fail under boxer (globs), with the reason
# (docs/compatibility.md, limits). With the tests' host on loopback:
CPYTHON_EXPECTED = {
    "test.test_socket.GeneralModuleTests.test_sethostname":
        "gethostname reports the instance's overlay name, not what sethostname set",
}
# With the tests' host set to the host's own address (plain: its lab address; wrapped: its
# overlay address), the overlay's path from the instance to itself:
CPYTHON_OWN_ADDRESS_EXPECTED = {
    **CPYTHON_EXPECTED,
    "test.test_socket.*UDP*": "the overlay carries TCP only: UDP cannot bind the overlay address",
    "test.test_socket.InterruptedRecvTimeoutTest.*": "UDP (see above)",
    "test.test_socket.GeneralModuleTests.test_socket_fileno": "binds a UDP socket to the host (see above)",
    "test.test_socket.NetworkConnectionAttributesTest.testSourceAddress":
        "a client's explicitly bound source port is not the port of its overlay connection",
}
REDIS_TESTS = "ping_inline,ping_mbulk,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange_100,mset"


# ---- reading the results (pure) ------------------------------------------------------------------


def junit_outcomes(xml_text: str) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped"} from regrtest's --junit-xml."""
    outcomes: dict[str, str] = {}
    for case in ET.fromstring(xml_text).iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes[case.get("name", "?")] = outcome
    return outcomes


def regressions(plain: dict[str, str], wrapped: dict[str, str], expected: dict[str, str]) -> list[str]:
    """Tests that pass plain and do not pass wrapped (missing counts as not passing), but for
    the expected ones (globs); and expected ones no test matches, or whose every plain-passing
    match passes wrapped after all (the list must stay true)."""
    def is_expected(test: str) -> bool:
        return any(fnmatch.fnmatchcase(test, pattern) for pattern in expected)

    broken = [f"{t}: {wrapped.get(t, 'missing')}" for t, o in sorted(plain.items())
              if o == "passed" and wrapped.get(t) != "passed" and not is_expected(t)]
    stale = []
    for pattern, why in expected.items():
        matches = [t for t, o in plain.items() if o == "passed" and fnmatch.fnmatchcase(t, pattern)]
        if matches and all(wrapped.get(t) == "passed" for t in matches):
            stale.append(f"{pattern}: expected to fail wrapped ({why}) but passes")
    return broken + stale


def redis_benchmark_results(csv_text: str) -> dict[str, float]:
    """{test: requests per second} from `redis-benchmark --csv`."""
    rows = csv.reader(io.StringIO(csv_text))
    return {row[0]: float(row[1]) for row in rows if len(row) >= 2 and row[0] != "test"}


def test_results_are_read_and_compared():
    xml = ('<testsuites><testsuite><testcase name="a.ok" /><testcase name="a.fails"><failure>x</failure>'
           '</testcase><testcase name="a.errs"><error>x</error></testcase><testcase name="a.skip"><skipped>'
           'no</skipped></testcase></testsuite></testsuites>')
    assert junit_outcomes(xml) == {"a.ok": "passed", "a.fails": "failed", "a.errs": "failed", "a.skip": "skipped"}
    plain = {"t.one": "passed", "t.two": "passed", "t.three": "skipped", "t.host": "passed", "t.gone": "passed"}
    wrapped = {"t.one": "passed", "t.two": "failed", "t.three": "failed", "t.host": "failed"}
    assert regressions(plain, wrapped, {"t.host": "why"}) == ["t.gone: missing", "t.two: failed"]
    assert regressions(plain, {**wrapped, "t.host": "passed"}, {"t.host": "why"})[-1] == \
        "t.host: expected to fail wrapped (why) but passes"
    assert regressions(plain, wrapped, {"t.t*": "why", "t.host": "why"}) == ["t.gone: missing"]
    assert redis_benchmark_results('"test","rps","avg"\n"PING_INLINE","12345.67","0.1"\n"SET","9.5","1"\n') == \
        {"PING_INLINE": 12345.67, "SET": 9.5}


# ---- the lab -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        print("skipping: foreign suites run in a lab: need root")
        pytest.skip("foreign suites run in a lab: need root")
    from boxer.lab import lab_down, lab_up

    name = f"fs{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    try:
        yield lab
    finally:
        lab_down(name)


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None and not os.path.exists(program):
            print(f"skipping: needs {program} (scripts/install-deps.sh)")
            pytest.skip(f"needs {program} (scripts/install-deps.sh)")


# ---- CPython's socket tests ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["loopback", "own-address"])
def test_cpython_socket_tests_pass_under_boxer_as_they_do_plain(lab, tmp_path, host):
    """loopback: the tests as shipped (localhost), which the interposer must leave alone.
    own-address: the tests' host set to the host's own address, so that they bind, listen,
    accept and connect on the overlay address under boxer (the agent's path to itself)."""
    need(SYSTEM_PYTHON, "unshare")
    if not Path(f"/usr/lib/python3.11/test/{CPYTHON_SUITES[0]}.py").exists():
        print("skipping: needs libpython3.11-testsuite (scripts/install-deps.sh)")
        pytest.skip("needs libpython3.11-testsuite (scripts/install-deps.sh)")
    hostname = socket.gethostname()
    results: dict[str, dict[str, str]] = {}
    for mode in ("plain", "wrapped"):
        cwd = tmp_path / mode
        cwd.mkdir()
        xml = cwd / "results.xml"
        if host == "loopback":
            python = [SYSTEM_PYTHON, "-m", "test"]
        else:
            own = lab.host("h1").address if mode == "plain" else "own"
            python = [SYSTEM_PYTHON, str(DATA / "cpython_own_host.py"), own]
        suite = [*python, "--timeout", "300", "--junit-xml", str(xml),
                 *(a for p in CPYTHON_LEFT_OUT for a in ("-i", p)), *CPYTHON_SUITES]
        argv = suite if mode == "plain" else boxer_run("pysuite", *suite)
        # A UTS namespace of their own: test_sethostname must not rename the machine.
        run = lab.run("h1", ["unshare", "--uts", *argv], cwd=cwd, capture_output=True, text=True, timeout=900)
        assert socket.gethostname() == hostname, "the suite changed the machine's host name"
        assert xml.exists(), f"{mode}: no results (rc {run.returncode}): {run.stdout[-3000:]} {run.stderr[-3000:]}"
        results[mode] = junit_outcomes(xml.read_text())
        print(f"{host} {mode}: {sum(o == 'passed' for o in results[mode].values())} passed, "
              f"{sum(o == 'failed' for o in results[mode].values())} failed, "
              f"{sum(o == 'skipped' for o in results[mode].values())} skipped")
    plain, wrapped = results["plain"], results["wrapped"]
    assert sum(o == "passed" for o in plain.values()) > 700, "the plain run did not run the suites"
    expected = CPYTHON_EXPECTED if host == "loopback" else CPYTHON_OWN_ADDRESS_EXPECTED
    assert regressions(plain, wrapped, expected) == []


# ---- redis-benchmark -----------------------------------------------------------------------------


def redis_benchmark(lab, argv: list[str]) -> dict[str, float]:
    run = lab.run("h2", argv, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return redis_benchmark_results(run.stdout)


def test_redis_benchmark_runs_every_test_across_the_overlay(lab, tmp_path):
    need("redis-server", "redis-benchmark", "redis-cli")
    server = ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    bench = ["-c", "50", "--threads", "2", "-n", "5000", "-P", "4", "-r", "1000", "-t", REDIS_TESTS, "--csv"]
    procs: list[subprocess.Popen] = []
    try:
        plain_server = lab.popen("h1", server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(plain_server)
        host, port = lab.port_forward("h1", 6379).rsplit(":", 1)
        wait_for("plain redis", lambda: lab.run("h2", ["redis-cli", "-h", host, "-p", port, "ping"],
                                                capture_output=True, text=True).stdout.strip() == "PONG")
        plain = redis_benchmark(lab, ["redis-benchmark", "-h", host, "-p", port, *bench])
        stop_all([plain_server])
        procs.append(lab.popen("h1", boxer_run("kv", *server), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL))
        wait_for("wrapped redis", lambda: lab.run("h2", boxer_run("ping", "redis-cli", "-h", "kv", "ping"),
                                                  capture_output=True, text=True).stdout.strip() == "PONG",
                 timeout=30)
        wrapped = redis_benchmark(lab, boxer_run("bench", "redis-benchmark", "-h", "kv", *bench))
        # Every client was accepted from the benchmark's overlay address.
        clients = lab.run("h2", boxer_run("lister", "redis-cli", "-h", "kv", "client", "list"),
                          capture_output=True, text=True).stdout
    finally:
        stop_all(procs)
    print("redis-benchmark rps, plain / wrapped:", {t: (plain[t], wrapped.get(t)) for t in plain})
    assert len(plain) >= len(REDIS_TESTS.split(",")), plain  # lrange_100 fills its list with an LPUSH run
    assert sorted(wrapped) == sorted(plain)
    assert all(rps > 0 for rps in wrapped.values()), wrapped
    assert re.search(r"addr=100\.\d+\.\d+\.\d+:\d+ ", clients), clients


# ---- iperf3 --------------------------------------------------------------------------------------


def iperf3(lab, server: list[str], client: list[str]) -> tuple[dict, dict]:
    """One iperf3 test: server (-1: one test, then exit) and client, both JSON."""
    srv = lab.popen("h1", server, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(50):
            run = lab.run("h2", client, capture_output=True, text=True, timeout=60)
            if '"error":\t"unable to connect' not in run.stdout and "unable to connect" not in run.stdout:
                break  # the server listens (it was starting while we tried)
        out, err = srv.communicate(timeout=30)
    finally:
        stop_all([srv])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert srv.returncode == 0, err[-3000:]
    return json.loads(run.stdout), json.loads(out)


def test_iperf3_parallel_streams_both_ways_see_overlay_addresses(lab):
    need("iperf3")
    test = ["-P", "4", "--bidir", "-t", "2", "-J"]
    host, port = lab.port_forward("h1", 5201).rsplit(":", 1)
    plain_client, plain_server = iperf3(lab, ["iperf3", "-s", "-1", "-J", "-p", "5201"],
                                        ["iperf3", "-c", host, "-p", port, *test])
    client, server = iperf3(lab, boxer_run("perf", "iperf3", "-s", "-1", "-J", "-p", "5201"),
                            boxer_run("perfc", "iperf3", "-c", "perf", "-p", "5201", *test))
    for c, s in ((plain_client, plain_server), (client, server)):
        assert "error" not in c and "error" not in s, (c.get("error"), s.get("error"))
        assert len(c["start"]["connected"]) == len(s["start"]["connected"]) == 8  # 4 each way
        assert c["end"]["sum_received"]["bytes"] > 0 and c["end"]["sum_received_bidir_reverse"]["bytes"] > 0
    # Wrapped, both ends see each other's overlay address (the server resolved nothing: these
    # are getpeername/getsockname of its accepted sockets).
    overlay = re.compile(r"100\.\d+\.\d+\.\d+")
    client_side = {(x["local_host"], x["remote_host"]) for x in client["start"]["connected"]}
    server_side = {(x["remote_host"], x["local_host"]) for x in server["start"]["connected"]}
    assert client_side == server_side and len(client_side) == 1, (client_side, server_side)
    assert all(overlay.fullmatch(a.removeprefix("::ffff:")) for a in next(iter(client_side)))
    print("iperf3 Mbit/s plain / wrapped:", plain_client["end"]["sum_received"]["bits_per_second"] / 1e6,
          client["end"]["sum_received"]["bits_per_second"] / 1e6)

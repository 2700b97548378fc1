"""Shared fixtures. Keep them generic: any test module may use them.

Lab fixtures (need root; they skip with the reason otherwise):

    def test_x(lab):                       # a 2-host lab with the real coordinator
        lab.run("h1", ["boxer", "run", ...])

    def test_y(lab_factory, standin_coordinator):
        small = lab_factory(hosts=3, coordinator_cmd=standin_coordinator)

Every lab made here is torn down by a finalizer, also when the test fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from boxer.lab import Lab, lab_down, lab_up

_lab_counter = itertools.count(1)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The two C libraries and what they are built from (setup.py). An editable install compiles them
# once, at `pip install -e .`; a rebase or checkout that changes a .c file afterwards leaves the
# old library in place, and the tests then run new Python against old C (a stale fast path once
# made a rollout test fail on three engineers' trees for a reason none of them had changed).
_NATIVE = {
    "boxer/libboxer_preload.so": ("interposer",),
    "boxer/libboxer_fastpath.so": ("boxer/agent", "interposer/boxer_proto.h"),
}


def stale_native_libraries(root: str = _REPO) -> list[str]:
    """The libraries under `root` that are missing or older than one of their sources."""
    stale = []
    for library, inputs in _NATIVE.items():
        built = os.path.join(root, library)
        if not os.path.exists(built):
            stale.append(library)
            continue
        sources = []
        for entry in inputs:
            path = os.path.join(root, entry)
            if os.path.isdir(path):
                sources += [os.path.join(path, name) for name in os.listdir(path) if name.endswith((".c", ".h"))]
            else:
                sources.append(path)
        if any(os.path.getmtime(source) > os.path.getmtime(built) for source in sources):
            stale.append(library)
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    """Rebuild the C libraries in place when their sources are newer, when the boxer under test is
    this checkout's own (an editable install); a wheel install has no sources beside it."""
    import boxer

    if os.path.dirname(os.path.dirname(os.path.abspath(boxer.__file__))) != _REPO:
        return
    stale = stale_native_libraries()
    if not stale:
        return
    import subprocess

    print(f"rebuilding {', '.join(stale)}: older than their sources", file=sys.stderr)
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"],
                           cwd=_REPO, capture_output=True, text=True)
    if built.returncode != 0 or stale_native_libraries():
        pytest.exit(f"{', '.join(stale)} is older than its sources and rebuilding failed; run"
                    f" `.venv/bin/pip install -e .` and read its output:\n{built.stderr[-3000:]}", returncode=3)


def lab_skip_reason() -> str | None:
    """Why lab tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, iptables)"
    for tool in ("ip", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"lab tests need `{tool}` (scripts/install-deps.sh installs it)"
    return None


@pytest.fixture(autouse=True)
def _own_cli_context(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and the boxer commands it runs) keeps its current deployment and lab in a
    folder of its own, never in the person's ~/.config/boxer, which `boxer up` would change."""
    monkeypatch.setenv("BOXER_CONFIG_DIR", str(tmp_path_factory.mktemp("boxer-config")))


@pytest.fixture
def require_lab() -> None:
    reason = lab_skip_reason()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)


def unique_lab_name() -> str:
    """`t<pid>x<n>`: unique per test run and process, valid as a lab name (<= 10 chars)."""
    return f"t{os.getpid() % 1_000_000}x{next(_lab_counter) % 100}"


# A stand-in for the coordinator: listens where it is told and writes the ready file, nothing
# else. For tests of the lab itself, so they do not depend on the real coordinator's health.
STANDIN_COORDINATOR_SRC = """
import argparse, pathlib, socket
p = argparse.ArgumentParser()
p.add_argument("--listen", required=True)
p.add_argument("--secret-file", required=True)
p.add_argument("--ready-file", required=True)
a = p.parse_args()
host, port = a.listen.rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen()
pathlib.Path(a.ready_file).write_text(a.listen + "\\n")
while True:
    conn, _ = s.accept()
    conn.close()
"""


@pytest.fixture
def standin_coordinator() -> list[str]:
    """A coordinator command for `lab_factory(coordinator_cmd=...)` that only listens."""
    return [sys.executable, "-c", STANDIN_COORDINATOR_SRC]


LabFactory = Callable[..., Lab]


@pytest.fixture
def lab_factory(require_lab: None) -> Iterator[LabFactory]:
    """Make labs with unique names: `lab_factory(hosts=2, coordinator_cmd=None, **options)`.
    `coordinator_cmd=None` runs the real coordinator; `options` go to `lab_up` (nat, public,
    rtt, jitter, loss, mapping_timeout). All are downed at teardown."""
    names: list[str] = []

    def make(
        hosts: int = 2, coordinator_cmd: Sequence[str] | None = None, **options: Any
    ) -> Lab:
        name = unique_lab_name()
        names.append(name)  # before lab_up: if it fails half way, teardown still runs
        return lab_up(name, hosts, coordinator_cmd=coordinator_cmd, **options)

    yield make
    for name in names:
        lab_down(name)


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    """A lab with two NATed hosts (h1, h2) and the real coordinator."""
    return lab_factory(hosts=2)

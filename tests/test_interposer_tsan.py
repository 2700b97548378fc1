"""The interposer under ThreadSanitizer: many threads connecting at once, and fork() while other
threads hold the fd table, with every access of the interposer's shared state instrumented.

The interposer's locks (one documented order, error-checking mutexes, re-created in the fork
child) are what keep its fd table true when an app's threads race; ASan/UBSan
(tests/test_interposer.py) catch memory errors but not a missing lock. The probe itself is built
with -fsanitize=thread too, so TSan sees the program's threads from their start. TSan's
die_after_fork is turned off: by default it ends a child forked while other threads run (its own
runtime may be mid-update there), and such a child using the interposer is what we test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_interposer import KV, ROOT, SOURCES, agent, echo_port, env_for, gcc  # noqa: F401 - fixtures

PROBE_SOURCE = ROOT / "tests" / "interposer_progs" / "probe.c"
TSAN_FLAGS = ["-g", "-O1", "-fsanitize=thread", "-std=gnu11", "-pthread", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def tsan_build(gcc: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    out = tmp_path_factory.mktemp("tsan")
    lib, probe = out / "libboxer_tsan.so", out / "probe_tsan"
    for args in ([gcc, "-shared", "-fPIC", "-fvisibility=hidden", *TSAN_FLAGS, "-o", str(lib),
                  *map(str, SOURCES), "-ldl"],
                 [gcc, *TSAN_FLAGS, "-o", str(probe), str(PROBE_SOURCE)]):
        build = subprocess.run(args, capture_output=True, text=True, check=False)
        if build.returncode != 0:
            pytest.skip(f"cannot build with -fsanitize=thread: {build.stderr[-500:]}")
    smoke = subprocess.run([str(probe)], capture_output=True, text=True, check=False)
    if "ThreadSanitizer" in smoke.stderr and "FATAL" in smoke.stderr:
        # TSan's shadow memory needs mmap randomisation at most 28 bits (vm.mmap_rnd_bits).
        pytest.skip(f"ThreadSanitizer cannot run on this kernel: {smoke.stderr.strip()[:300]}")
    return lib, probe


@pytest.mark.parametrize("args", [
    ["threads", "16", "inet6", KV, "6379"],
    ["fork", "12", KV, "6379"],
], ids=["threads-connect", "fork-while-threads"])
def test_no_data_race_in_the_interposer(tsan_build, agent, echo_port, args):  # noqa: F811
    lib, probe = tsan_build
    env = env_for(agent, lib, TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1:die_after_fork=0")
    run = subprocess.run([str(probe), *args], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert "WARNING: ThreadSanitizer" not in run.stderr, run.stderr[-4000:]
    assert run.returncode == 0, run.stderr[-3000:]

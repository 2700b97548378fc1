"""The whole Lambda path, locally: a real awslambdaric runtime in a NATed lab host runs the real
handler, which starts `boxer run`; the instance serves redis to an instance on another host."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time

import pytest

pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("lab tests need root (network namespaces, iptables)", allow_module_level=True)
if importlib.util.find_spec("awslambdaric") is None:
    pytest.skip("awslambdaric is not installed (pip install '.[test]')", allow_module_level=True)


def test_lambda_local_instance_in_a_nated_host_serves_redis_to_another_instance():
    from boxer.backends.base import InstanceSpec
    from boxer.backends.emulators.lambda_local import LocalLambdaBackend
    from boxer.lab import lab_down, lab_up

    name = f"ll{os.getpid() % 100000}"
    lab = lab_up(name, hosts=2)
    try:
        backend = LocalLambdaBackend(coordinator=lab.coordinator, secret_file=lab.secret_file, timeout=60,
                                     wrap=["ip", "netns", "exec", lab.host("h1").netns])
        spec = InstanceSpec(name="kv", service="kv", index=0,
                            command=("redis-server", "--port", "6379", "--save", "", "--protected-mode", "no"))

        async def scenario() -> tuple[str, dict | None]:
            handle = await backend.launch(spec)
            cli = lab.command("h2", [sys.executable, "-m", "boxer", "run", "--name", "cli", "--",
                                     "redis-cli", "-h", "kv", "ping"])
            answer = ""
            deadline = time.monotonic() + 30
            while answer != "PONG" and time.monotonic() < deadline:
                proc = await asyncio.create_subprocess_exec(*cli, env=lab.env("h2"),
                                                            stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.DEVNULL)
                out, _ = await proc.communicate()
                answer = out.decode().strip()
                if answer != "PONG":
                    await asyncio.sleep(0.3)
            await backend.stop(handle)
            return answer, await backend.wait(handle)

        answer, result = asyncio.run(scenario())
        assert answer == "PONG"
        assert result is not None and result["status"] in ("ok", "stopped"), result
    finally:
        lab_down(name)

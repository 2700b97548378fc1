"""The Lambda image, checked without Docker (no engine runs here): the Dockerfiles parse into
instructions, build the interposer inside the image, and point CMD at an importable handler."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "lambda_image"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    parsed = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        assert keyword.isupper(), f"{path.name}: {keyword!r} is not an instruction"
        parsed.append((keyword, args.strip()))
    return parsed


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in parsed:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_base_image_is_lambda_python_311() -> None:
    parsed = instructions(IMAGE / "Dockerfile")
    args = dict(a.split("=", 1) for k, a in parsed if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "public.ecr.aws/lambda/python:3.11"
    froms = [a for k, a in parsed if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_interposer_is_compiled_in_the_image() -> None:
    build, runtime = stages(instructions(IMAGE / "Dockerfile"))
    runs = " ".join(a for k, a in build if k == "RUN")
    assert "yum install -y gcc" in runs
    assert "pip wheel" in runs  # setup.py's build_ext compiles interposer/ here
    runtime_runs = " ".join(a for k, a in runtime if k == "RUN")
    assert "libboxer_preload.so" in runtime_runs  # the build checks the library is there
    assert not any("gcc" in a for k, a in runtime if k == "RUN")


def test_copied_sources_exist() -> None:
    for keyword, args in instructions(IMAGE / "Dockerfile"):
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_cmd_names_an_importable_handler() -> None:
    parsed = instructions(IMAGE / "Dockerfile")
    (cmd,) = [a for k, a in parsed if k == "CMD"]
    (target,) = json.loads(cmd)  # exec form, one handler
    module, _, name = target.rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    assert callable(handler)
    assert not [a for k, a in parsed if k == "ENTRYPOINT"]  # the base image's entry point runs


@pytest.mark.parametrize("name", ["redis.Dockerfile", "nginx.Dockerfile"])
def test_examples_extend_the_base_and_keep_its_handler(name: str) -> None:
    parsed = instructions(IMAGE / "examples" / name)
    froms = [a for k, a in parsed if k == "FROM"]
    assert froms and all(f.startswith("${BOXER_IMAGE}") for f in froms)
    assert not [a for k, a in parsed if k in ("CMD", "ENTRYPOINT")]
    final = stages(parsed)[-1]
    assert any(k == "COPY" and a.startswith("--from=build") for k, a in final)


def test_nginx_example_writes_only_to_tmp() -> None:
    conf = (IMAGE / "examples" / "nginx-boxer.conf").read_text()
    assert "daemon off;" in conf
    paths = re.findall(r"(?:pid|_temp_path)\s+(\S+);", conf)
    assert paths and all(p.startswith("/tmp/") for p in paths)

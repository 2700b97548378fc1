"""The Lambda image's recipe, checked statically: the Dockerfiles parse into instructions, build
the interposer inside the image, leave lab code out, and point CMD at an importable handler;
its build is cached by the hash of its inputs. The image is built and run for real (buildah) by
tests/test_lambda_image_run.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "lambda_image"


def load_build() -> Any:
    """lambda_image/build.py (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("lambda_image_build", IMAGE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


def test_base_is_a_build_argument_used_by_both_stages() -> None:
    parsed = instructions(IMAGE / "Dockerfile")
    args = dict(a.split("=", 1) for k, a in parsed if k == "ARG" and "=" in a)
    assert args["BASE_IMAGE"].startswith("docker.io/library/python:3.11-slim-bookworm")
    froms = [a for k, a in parsed if k == "FROM"]
    # The function's image is the last stage, what a build without --target makes; the
    # controller's (--target controller) is built from the same build stage.
    assert froms == ["${BASE_IMAGE} AS build", "build AS controller-build", "${BASE_IMAGE} AS controller",
                     "${BASE_IMAGE}"]


def test_the_controller_target_is_boxer_with_the_controllers_extras_in_the_same_venv() -> None:
    _, controller_build, controller, runtime = stages(instructions(IMAGE / "Dockerfile"))
    runs = " ".join(a for k, a in controller_build if k == "RUN")
    assert "python3 -m venv /opt/boxer" in runs and '".[control,aws]"' in runs
    assert "cd / && /opt/boxer/bin/python -c \"import boxer.controller.host" in runs  # not shadowed by /src
    assert ("COPY", "--from=controller-build /opt/boxer /opt/boxer") in controller
    assert ("ENTRYPOINT", '["/opt/boxer/bin/python", "-m", "boxer.controller.daemon"]') in controller
    assert ("ENTRYPOINT", '["/opt/boxer/bin/python", "-m", "awslambdaric"]') in runtime


def test_interposer_is_compiled_in_the_image_and_the_runtime_has_no_compiler() -> None:
    found = stages(instructions(IMAGE / "Dockerfile"))
    build, runtime = found[0], found[-1]
    runs = " ".join(a for k, a in build if k == "RUN")
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in runs
    assert "pip install" in runs and "--no-deps ." in runs  # setup.py's build_ext compiles interposer/
    assert "libboxer_preload.so" in runs  # the build checks the library is there
    assert not [a for k, a in runtime if k == "RUN"]
    assert ("COPY", "--from=build /opt/boxer /opt/boxer") in runtime


def test_no_lab_code_and_no_heavy_dependencies_in_the_image() -> None:
    build = stages(instructions(IMAGE / "Dockerfile"))[0]
    runs = " ".join(a for k, a in build if k == "RUN")
    for gone in ('"$site/lab"', '"$site/controller"', '"$site/backends/emulators"'):
        assert gone in runs
    requirements = [line.split(">")[0].split("=")[0].strip().lower()
                    for line in (IMAGE / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["awslambdaric", "boto3", "click", "psutil", "uvloop"]
    declared = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                        + [d for ds in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                           ["optional-dependencies"].values() for d in ds]).lower()
    assert all(name in declared for name in requirements)  # the same packages boxer declares


def test_every_copied_input_is_hashed_and_a_change_makes_a_new_tag(tmp_path: Path) -> None:
    build = load_build()
    for keyword, args in instructions(IMAGE / "Dockerfile"):
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert source.rstrip("/") in build.INPUTS, f"COPY {source}: not in build.INPUTS"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("one")
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_text("ignored")
    first = build.inputs_hash(("a",), tmp_path)
    assert build.inputs_hash(("a",), tmp_path) == first  # nothing changed: the same tag, no build
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_text("still ignored")
    (tmp_path / "a" / "lib.so").write_text("a host build")
    assert build.inputs_hash(("a",), tmp_path) == first
    (tmp_path / "a" / "x.py").write_text("two")
    assert build.inputs_hash(("a",), tmp_path) != first
    assert build.inputs_hash(("a",), tmp_path, "another base") != build.inputs_hash(("a",), tmp_path)


def test_the_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    build = load_build()
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n"
                      "Types: deb\nURIs: http://mirror.example/debian-security\n")
    assert build.debian_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb http://other.example/debian bookworm main\n")
    assert build.debian_mirror([one_line]) == "http://other.example/debian"
    assert build.debian_mirror([tmp_path / "missing.list"]) == build.DEFAULT_MIRROR


def test_copied_sources_exist() -> None:
    for keyword, args in instructions(IMAGE / "Dockerfile"):
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_entrypoint_is_the_runtime_client_and_cmd_an_importable_handler() -> None:
    parsed = stages(instructions(IMAGE / "Dockerfile"))[-1]  # the function's: the default target
    (entrypoint,) = [a for k, a in parsed if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/opt/boxer/bin/python", "-m", "awslambdaric"]
    (cmd,) = [a for k, a in parsed if k == "CMD"]
    (target,) = json.loads(cmd)  # exec form, one handler
    module, _, name = target.rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    assert callable(handler)


@pytest.mark.parametrize("name", ["redis.Dockerfile", "nginx.Dockerfile"])
def test_examples_extend_the_base_and_keep_its_entry_point(name: str) -> None:
    parsed = instructions(IMAGE / "examples" / name)
    froms = [a for k, a in parsed if k == "FROM"]
    assert froms == ["${BOXER_IMAGE}"]
    assert not [a for k, a in parsed if k in ("CMD", "ENTRYPOINT")]
    runs = " ".join(a for k, a in parsed if k == "RUN")
    assert "apt-get install -y --no-install-recommends" in runs  # the base's own packages


def test_nginx_example_writes_only_to_tmp() -> None:
    conf = (IMAGE / "examples" / "nginx-boxer.conf").read_text()
    assert "daemon off;" in conf
    paths = re.findall(r"(?:pid|_temp_path)\s+(\S+);", conf)
    assert paths and all(p.startswith("/tmp/") for p in paths)

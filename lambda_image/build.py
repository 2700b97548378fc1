"""Build boxer's Lambda image here, with buildah, on a Debian base made with debootstrap.

    python3 lambda_image/build.py                 # the base image; prints its name
    python3 lambda_image/build.py --example redis # and lambda_image/examples/redis.Dockerfile
    python3 lambda_image/build.py --controller    # and the controller (--target controller)

No daemon and no registry: buildah keeps images in its local storage (/var/lib/containers:
overlay where the kernel allows it, else set STORAGE_DRIVER=vfs) and runs RUN steps with chroot
isolation. Every image is tagged with the hash of what went into it, and a build whose tag is
already in the storage is skipped, so a second run costs a `buildah images` call:

    localhost/boxer-debian-base:<recipe hash>     debootstrap --variant=minbase + python3
    localhost/boxer-lambda:<inputs hash>          lambda_image/Dockerfile on that base
    localhost/boxer-lambda-redis:<inputs hash>    an example, FROM the image above
    localhost/boxer-controller:<inputs hash>      the Dockerfile's controller target

The Debian mirror is the one this machine's apt uses (/etc/apt/sources.list*), so the build
reaches what apt reaches.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("boxer.lambda_image.build")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "lambda_image" / "Dockerfile"
EXAMPLES = ROOT / "lambda_image" / "examples"

# What lambda_image/Dockerfile copies from the context (tests check every COPY is here): a
# change to any of these makes a new image.
INPUTS = ("lambda_image/Dockerfile", "lambda_image/requirements.txt", "pyproject.toml", "setup.py",
          "README.md", "interposer", "boxer", "nat_traversal", "controller")
_SKIPPED = re.compile(r"(^|/)(__pycache__|[^/]*\.egg-info)(/|$)|\.(so|pyc)$")

# The base: Debian 12, as small as debootstrap makes it, plus what the Dockerfile asks of a base
# (python3 with venv) and the CA certificates pip needs to reach PyPI over TLS.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPO = "localhost/boxer-debian-base"
IMAGE_REPO = "localhost/boxer-lambda"
CONTROLLER_REPO = "localhost/boxer-controller"  # the Dockerfile's `controller` target
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def buildah_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BUILDAH_ISOLATION", "chroot")
    return env


def _buildah(*args: str, capture: bool = True) -> str:
    proc = subprocess.run(["buildah", *args], env=buildah_env(), text=True, check=False,
                          # a build's progress goes to our stderr: stdout is for the tags
                          stdout=subprocess.PIPE if capture else sys.stderr, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise BuildError(f"buildah {' '.join(args[:2])} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout or ""


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def _files(paths: Iterable[str], root: Path) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = root / name
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file()
                      and not _SKIPPED.search(p.relative_to(root).as_posix())]
        elif path.is_file():
            found.append(path)
        else:
            raise BuildError(f"{name}: an input of the image is missing from {root}")
    return sorted(found)


def inputs_hash(paths: Sequence[str] = INPUTS, root: Path = ROOT, *extra: str) -> str:
    """sha256 over each input file's path and bytes (and `extra` strings), 16 hex digits."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for path in _files(paths, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def base_recipe() -> str:
    return f"debootstrap --variant=minbase {BASE_SUITE} include={','.join(BASE_PACKAGES)}"


def base_tag() -> str:
    return f"{BASE_REPO}:{hashlib.sha256(base_recipe().encode()).hexdigest()[:16]}"


def image_tag() -> str:
    return f"{IMAGE_REPO}:{inputs_hash(INPUTS, ROOT, base_tag())}"


def controller_tag() -> str:
    return f"{CONTROLLER_REPO}:{inputs_hash(INPUTS, ROOT, base_tag())}"


def example_tag(example: str) -> str:
    dockerfile = f"lambda_image/examples/{example}.Dockerfile"
    return f"{IMAGE_REPO}-{example}:{inputs_hash((dockerfile,), ROOT, image_tag())}"


def have_image(tag: str) -> bool:
    names = _buildah("images", "--format", "{{.Name}}:{{.Tag}}").split()
    return tag in names


def debian_mirror(sources: Iterable[Path] = (Path("/etc/apt/sources.list"),
                                             *sorted(Path("/etc/apt/sources.list.d").glob("*")))) -> str:
    """The first Debian (not -security) mirror this machine's apt uses, one-line or deb822."""
    for path in sources:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            urls = (line.split(":", 1)[1].split() if line.startswith("URIs:")
                    else line.split()[1:2] if line.startswith("deb ") else [])
            for url in urls:
                if "security" not in url and url.startswith(("http://", "https://")):
                    return url.rstrip("/")
    return DEFAULT_MIRROR


def build_base(tag: str) -> None:
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed: scripts/install-deps.sh installs it")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="boxer-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.info("debootstrap %s from %s", BASE_SUITE, mirror)
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                               BASE_SUITE, str(rootfs), mirror], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"debootstrap failed: {(proc.stdout + proc.stderr).strip()[-2000:]}")
        # apt's downloads and lists are build leftovers; the Dockerfile runs apt-get update.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        container = _buildah("from", "scratch").strip()
        try:
            _buildah("add", container, str(tarball), "/")
            _buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", container)
            _buildah("commit", "--quiet", container, tag)
        finally:
            _buildah("rm", container)


# The certificates this machine trusts, lent to RUN steps (not committed): where PyPI is reached
# through a proxy with its own authority, pip inside the build then trusts it as the host does.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def build_image(tag: str, dockerfile: Path, context: Path, base_arg: str, base: str,
                target: str | None = None) -> None:
    volumes = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.is_file() else []
    targets = ["--target", target] if target else []
    _buildah("bud", "--layers", "--force-rm", "--isolation", "chroot", *volumes, *targets, "-f", str(dockerfile),
             "--build-arg", f"{base_arg}={base}", "-t", tag, str(context), capture=False)


def ensure(tag: str, build: object, what: str) -> float:
    """Build `tag` unless it exists; seconds spent (0 when it was there)."""
    if have_image(tag):
        log.info("%s %s: already built", what, tag)
        return 0.0
    started = time.monotonic()
    build()  # type: ignore[operator]
    spent = time.monotonic() - started
    log.info("%s %s: built in %.0f s", what, tag, spent)
    return spent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", action="append", default=[],
                        help="also build lambda_image/examples/NAME.Dockerfile on the image")
    parser.add_argument("--controller", action="store_true",
                        help="also build the controller image (the Dockerfile's `controller` target: what "
                             "terraform runs beside the coordinator)")
    parser.add_argument("--print-tag", action="store_true", help="print the tags, build nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="build-lambda-image: %(message)s", stream=sys.stderr)
    try:
        base, image = base_tag(), image_tag()
        examples = {name: example_tag(name) for name in args.example}
        controller = [controller_tag()] if args.controller else []
        if args.print_tag:
            print("\n".join([image, *examples.values(), *controller]))
            return 0
        if shutil.which("buildah") is None:
            raise BuildError("buildah is not installed: scripts/install-deps.sh installs it")
        ensure(base, lambda: build_base(base), "base")
        ensure(image, lambda: build_image(image, DOCKERFILE, ROOT, "BASE_IMAGE", base), "image")
        for name, tag in examples.items():
            dockerfile = EXAMPLES / f"{name}.Dockerfile"
            ensure(tag, lambda d=dockerfile, t=tag: build_image(t, d, EXAMPLES, "BOXER_IMAGE", image),
                   f"example {name}")
        if controller:
            ensure(controller[0], lambda: build_image(controller[0], DOCKERFILE, ROOT, "BASE_IMAGE", base,
                                                      target="controller"), "controller image")
    except BuildError as exc:
        print(f"build-lambda-image: {exc}", file=sys.stderr)
        return 1
    print("\n".join([image, *examples.values(), *controller]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

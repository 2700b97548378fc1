"""A container image, opened for the local Lambda: its root filesystem as a directory, and its
entry point, command, environment and working directory, from buildah's local storage.

    root = open_image("localhost/boxer-lambda-redis:3aea...", "demo")   # buildah from + mount
    root.runtime_argv      # ENTRYPOINT + CMD: what Lambda runs in the execution environment
    close_image(root)      # buildah umount + rm

One working container per deployment (named `boxer-<deployment>`, so a run that crashed is
cleaned up by the next `open_image` of that name); every sandbox of the deployment mounts its
root read-only, so they share it as Lambda's environments share a function's image.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ImageError", "ImageRoot", "close_image", "open_image"]

log = logging.getLogger(__name__)


class ImageError(RuntimeError):
    """The image cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ImageRoot:
    image: str
    container: str
    rootfs: str
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/var/task"

    @property
    def runtime_argv(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "entrypoint": list(self.entrypoint), "cmd": list(self.cmd),
                "env": dict(self.env)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageRoot:
        return cls(image=data["image"], container=data["container"], rootfs=data["rootfs"],
                   entrypoint=tuple(data.get("entrypoint") or ()), cmd=tuple(data.get("cmd") or ()),
                   env=dict(data.get("env") or {}), workdir=data.get("workdir") or "/var/task")


def _buildah(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("buildah") is None:
        raise ImageError("--image needs buildah (apt-get install buildah; scripts/install-deps.sh "
                         "installs it)")
    env = dict(os.environ)
    env.setdefault("BUILDAH_ISOLATION", "chroot")
    return subprocess.run(["buildah", *args], capture_output=True, text=True, env=env, check=False)


def image_config(image: str) -> dict[str, Any]:
    proc = _buildah("inspect", "--type", "image", image)
    if proc.returncode != 0:
        raise ImageError(f"image {image!r} is not in buildah's local storage ({proc.stderr.strip()}): "
                         "build it with `python3 lambda_image/build.py --example redis`, or "
                         "`buildah pull` it")
    data = json.loads(proc.stdout)
    config: dict[str, Any] = (data.get("OCIv1") or {}).get("config") or {}
    return config


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def open_image(image: str, name: str) -> ImageRoot:
    """A working container of `image` named after the deployment, mounted."""
    config = image_config(image)
    entrypoint, cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
    if not entrypoint and not cmd:
        raise ImageError(f"image {image!r} has neither ENTRYPOINT nor CMD: Lambda would have "
                         "nothing to run (build it from lambda_image/Dockerfile)")
    container = f"boxer-{name}"
    _buildah("rm", container)  # what a crashed run left behind; an error if none: fine
    made = _buildah("from", "--pull-never", "--name", container, image)
    if made.returncode != 0:
        raise ImageError(f"buildah from {image}: {made.stderr.strip()}")
    mounted = _buildah("mount", container)
    if mounted.returncode != 0:
        _buildah("rm", container)
        raise ImageError(f"buildah mount {container}: {mounted.stderr.strip()}")
    root = ImageRoot(image=image, container=container, rootfs=mounted.stdout.strip(),
                     entrypoint=tuple(entrypoint), cmd=tuple(cmd),
                     env=parse_env(config.get("Env") or []),
                     workdir=config.get("WorkingDir") or "/var/task")
    log.info("image %s mounted at %s (container %s)", image, root.rootfs, container)
    return root


def close_image(root: ImageRoot | Mapping[str, Any]) -> None:
    container = root.container if isinstance(root, ImageRoot) else root["container"]
    _buildah("umount", container)
    _buildah("rm", container)

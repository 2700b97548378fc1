"""A Lambda execution environment on this machine: a program run from an image's root
filesystem the way Lambda runs a function's entry point.

    python -m boxer.backends.emulators.sandbox --root ROOTFS [options] -- ENTRYPOINT CMD...

As root, in the network namespace it is started in (a lab host behind NAT), it

- makes a mount namespace and a PID namespace of its own: the program's processes see only
  each other, and when the sandbox's first process (pid 1 inside) dies the kernel SIGKILLs
  every one of them: ending the sandbox at the function timeout is one SIGKILL;
- mounts ROOTFS read-only as the root, a tmpfs of bounded size on /tmp (Lambda: 512 MB by
  default, `ephemeral_storage`), a fresh /proc, and a /dev with only null, zero, full, random,
  urandom and tty (no /dev/shm: Lambda has none);
- copies files it is given (`--copy SRC:DEST`, the lab's stand-in for what a function reads
  from SSM) into the sandbox, owned by the sandbox's user;
- caps descriptors (1024) and processes (1024), then becomes a non-root user (uid/gid 993, as
  Lambda's sbx_user1051) with no supplementary groups, an empty capability bounding set and
  no_new_privs (no setuid binary can give any back), and with `--deny pidfd_open,
  family:netlink,SO_REUSEPORT,...` makes those system calls fail with ENOSYS, those socket
  families with EAFNOSUPPORT and SO_REUSEPORT with ENOPROTOOPT (seccomp.py: a kernel or a
  sandbox without them, for the tests of the agent's fallbacks);
- and execs the program in the working directory with exactly the environment it was given.

Nothing here is Lambda's own code: it is the documented contract of the environment
(read-only root, writable /tmp, the user, the limits) built from kernel features.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxer._python import module_argv

__all__ = ["LAMBDA_GID", "LAMBDA_UID", "SandboxConfig", "sandbox_argv"]

log = logging.getLogger(__name__)

LAMBDA_UID = LAMBDA_GID = 993  # sbx_user1051, the user Lambda runs a function as
DEFAULT_TMP_SIZE = "512m"
DEFAULT_NOFILE = 1024
DEFAULT_NPROC = 1024

# <sched.h>, <sys/mount.h>, <linux/prctl.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_PDEATHSIG = 1
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class SandboxConfig:
    root: str
    argv: Sequence[str]
    workdir: str = "/var/task"
    uid: int = LAMBDA_UID
    gid: int = LAMBDA_GID
    tmp_size: str = DEFAULT_TMP_SIZE
    nofile: int = DEFAULT_NOFILE
    nproc: int = DEFAULT_NPROC
    copies: Sequence[tuple[str, str]] = ()  # (host path, path inside) pairs
    deny: Sequence[str] = field(default_factory=tuple)  # syscalls, family:NAME, SO_REUSEPORT


def sandbox_argv(config: SandboxConfig, python: str = sys.executable) -> list[str]:
    """The command line that runs `config.argv` in a sandbox (as root)."""
    argv = [*module_argv("boxer.backends.emulators.sandbox", python=python), "--root", config.root,
            "--workdir", config.workdir, "--uid", str(config.uid), "--gid", str(config.gid),
            "--tmp-size", config.tmp_size, "--nofile", str(config.nofile),
            "--nproc", str(config.nproc)]
    for source, dest in config.copies:
        argv += ["--copy", f"{source}:{dest}"]
    if config.deny:
        argv += ["--deny", ",".join(config.deny)]
    return [*argv, "--", *config.argv]


# -- inside ------------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class SandboxError(RuntimeError):
    """A step of building the sandbox failed; says which."""


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {source} on {target}")


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def build_filesystem(config: SandboxConfig) -> None:
    """In our own mount namespace (private, so nothing leaks out): the image root read-only,
    then /tmp, /proc and /dev on it. Runs as pid 1 of the new PID namespace (for /proc)."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    root = config.root
    _mount(root, root, None, MS_BIND | MS_REC)
    _mount(root, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _mount("tmpfs", _inside(root, "/tmp"), "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config.tmp_size},mode=1777")
    _mount("proc", _inside(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = _inside(root, "/dev")
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name in DEVICES:
        node = os.path.join(dev, name)
        Path(node).touch()
        _mount(f"/dev/{name}", node, None, MS_BIND)
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, link))
    for source, dest in config.copies:
        inside = _inside(root, dest)
        if not os.path.realpath(inside).startswith(_inside(root, "/tmp")):
            raise SandboxError(f"--copy {dest}: only /tmp is writable in the sandbox")
        os.makedirs(os.path.dirname(inside), mode=0o700, exist_ok=True)
        os.chown(os.path.dirname(inside), config.uid, config.gid)
        shutil.copyfile(source, inside)
        os.chown(inside, config.uid, config.gid)
        os.chmod(inside, 0o400)


def seccomp_filter(deny: Sequence[str]) -> Any:
    """The filter for `--deny` (built before chroot: libseccomp is the host's)."""
    if not deny:
        return None
    from boxer.backends.emulators.seccomp import SeccompFilter

    families = [d.split(":", 1)[1] for d in deny if d.startswith("family:")]
    syscalls = [d for d in deny if not d.startswith("family:") and d != "SO_REUSEPORT"]
    return SeccompFilter.build(syscalls, families=families, reuseport="SO_REUSEPORT" not in deny)


def become_function(config: SandboxConfig, flt: Any = None) -> None:
    """chroot, limits, the user, no capabilities, the seccomp filter; then only exec remains."""
    os.chroot(config.root)
    os.chdir(config.workdir if os.path.isdir(config.workdir) else "/")
    resource.setrlimit(resource.RLIMIT_NOFILE, (config.nofile, config.nofile))
    resource.setrlimit(resource.RLIMIT_NPROC, (config.nproc, config.nproc))
    # The bounding set first (dropping needs CAP_SETPCAP, which we lose with root).
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    os.setgroups([])
    os.setgid(config.gid)
    os.setuid(config.uid)  # clears the permitted and effective capability sets
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if flt is not None:
        flt.load()


def _init(config: SandboxConfig) -> int:
    """pid 1 of the sandbox: build it, start the program, reap, pass SIGTERM on, exit with the
    program's status (and so SIGKILL whatever it left behind)."""
    build_filesystem(config)
    flt = seccomp_filter(config.deny)
    child = os.fork()
    if child == 0:
        try:
            become_function(config, flt)
            os.execvpe(config.argv[0], list(config.argv), dict(os.environ))
        except BaseException as exc:  # the child must never return into our code
            os.write(2, f"sandbox: cannot start {config.argv[0]!r}: {exc}\n".encode())
        os._exit(127)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: os.kill(child, signal.SIGINT))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + (status & 0x7F)


def run(config: SandboxConfig) -> int:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (mount and PID namespaces, chroot)")
    if not os.path.isdir(config.root):
        raise SandboxError(f"--root {config.root}: not a directory (an image's root filesystem)")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare(mount, pid)")
    init = os.fork()  # the first child is pid 1 of the new PID namespace
    if init == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # we die: the sandbox dies
        try:
            code = _init(config)
        except (SandboxError, RuntimeError, OSError) as exc:
            os.write(2, f"sandbox: {exc}\n".encode())
            code = 125
        os._exit(code)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(init, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if status & 0x7F == 0 else 128 + (status & 0x7F)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxer.backends.emulators.sandbox",
                                     description="Run a program from an image root as Lambda runs one.")
    parser.add_argument("--root", required=True, help="the image's root filesystem (a directory)")
    parser.add_argument("--workdir", default="/var/task")
    parser.add_argument("--uid", type=int, default=LAMBDA_UID)
    parser.add_argument("--gid", type=int, default=LAMBDA_GID)
    parser.add_argument("--tmp-size", default=DEFAULT_TMP_SIZE)
    parser.add_argument("--nofile", type=int, default=DEFAULT_NOFILE)
    parser.add_argument("--nproc", type=int, default=DEFAULT_NPROC)
    parser.add_argument("--copy", action="append", default=[], metavar="SRC:DEST")
    parser.add_argument("--deny", default="", metavar="SYSCALL|family:NAME|SO_REUSEPORT,...",
                        help="make these fail as a kernel without them would (seccomp)")
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args(argv)
    copies = []
    for item in args.copy:
        source, sep, dest = item.partition(":")
        if not sep or not dest.startswith("/"):
            parser.error(f"--copy {item!r}: expected HOST_PATH:/ABSOLUTE/PATH/IN/SANDBOX")
        copies.append((source, dest))
    config = SandboxConfig(root=os.path.realpath(args.root), argv=args.argv, workdir=args.workdir,
                           uid=args.uid, gid=args.gid, tmp_size=args.tmp_size, nofile=args.nofile,
                           nproc=args.nproc, copies=copies,
                           deny=tuple(s for s in args.deny.split(",") if s))
    try:
        return run(config)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())

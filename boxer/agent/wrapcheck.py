"""Can the interposer wrap this program? Decided before it runs, so it is never run unwrapped.

LD_PRELOAD only reaches programs that go through the dynamic loader and libc's socket calls:
  - a statically linked binary has no dynamic loader: the preload is never loaded;
  - a Go binary makes its socket calls as raw system calls, bypassing libc, even when linked
    dynamically (REFERENCE.md: mirrord);
  - a setuid/setgid binary makes the loader drop LD_PRELOAD for security.
Scripts are judged by their interpreter (#!).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct

GO_SECTIONS = (b".go.buildinfo", b".gopclntab", b".note.go.buildid")


class UnwrappableError(Exception):
    """The program cannot run under the interposer; the message says why and what to do."""


def resolve_program(argv0: str) -> str:
    path = argv0 if "/" in argv0 else shutil.which(argv0)
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"command not found: {argv0}")
    return os.path.realpath(path)


def check_wrappable(argv: list[str], _depth: int = 0) -> str:
    """Raises UnwrappableError with the reason, or returns the resolved program path."""
    path = resolve_program(argv[0])
    mode = os.stat(path).st_mode
    if mode & (stat.S_ISUID | stat.S_ISGID):
        raise UnwrappableError(
            f"{path} is setuid/setgid: the dynamic loader ignores LD_PRELOAD for it, so it would run "
            "outside the overlay. Run a copy without the setuid bit, or a non-setuid equivalent.")
    with open(path, "rb") as f:
        head = f.read(256)
        if head.startswith(b"#!"):
            if _depth > 4:
                raise UnwrappableError(f"{path}: too many levels of #! interpreters")
            interpreter = head[2:].split(b"\n", 1)[0].split()
            if not interpreter:
                raise UnwrappableError(f"{path}: empty #! line")
            words = [w.decode() for w in interpreter]
            if os.path.basename(words[0]) == "env" and len(words) > 1:
                words = [w for w in words[1:] if not w.startswith("-")]
            check_wrappable(words, _depth + 1)
            return path
        if not head.startswith(b"\x7fELF"):
            raise UnwrappableError(f"{path} is neither an ELF binary nor a #! script")
        f.seek(0)
        _check_elf(path, f.read())
    return path


def _check_elf(path: str, data: bytes) -> None:
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack_from(endian + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHHHH", data, 0x36)
    else:
        phoff, shoff = struct.unpack_from(endian + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHHHH", data, 0x2A)
    PT_INTERP = 3
    has_interp = any(
        struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum)
    )
    if not has_interp:
        raise UnwrappableError(
            f"{path} is statically linked: LD_PRELOAD cannot reach it, so it would run outside the "
            "overlay. Use a dynamically linked build (most distribution packages are).")
    if _section_names(data, endian, is64, shoff, shentsize, shnum, shstrndx) & set(GO_SECTIONS):
        raise UnwrappableError(
            f"{path} is a Go program: Go makes socket calls without libc, so the interposer cannot "
            "see them. Build it with cgo and the netgo tag off (CGO_ENABLED=1), or run a C/C++/JVM/"
            "Python equivalent.")


def _section_names(data: bytes, endian: str, is64: bool, shoff: int, shentsize: int, shnum: int,
                   shstrndx: int) -> set[bytes]:
    if shoff == 0 or shnum == 0 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return set()
    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, = struct.unpack_from(endian + "I", data, base)
            offset, size = struct.unpack_from(endian + "QQ", data, base + 0x18)
        else:
            name, = struct.unpack_from(endian + "I", data, base)
            offset, size = struct.unpack_from(endian + "II", data, base + 0x10)
        return name, offset, size
    _, str_off, str_size = header(shstrndx)
    table = data[str_off:str_off + str_size]
    names = set()
    for i in range(shnum):
        name_off = header(i)[0]
        end = table.find(b"\0", name_off)
        names.add(table[name_off:end])
    return names

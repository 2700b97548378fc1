#!/usr/bin/env python3
"""What an interposed call costs, without the interposer, with a baseline build of it (a git ref,
by default main) and with the current sources, side by side in one run.

A small C program (below) runs tight loops of calls every app makes often, on descriptors the
interposer tracks (a TCP socket) and does not track (an eventfd); the interposer is enabled
(BOXER_AGENT_SOCK set; no agent is needed for these calls). Three figures per call:

  instr     user-space instructions per call (valgrind callgrind: loops of N and 2N calls,
            the difference / N); deterministic, so it shows small differences
  syscalls  system calls per call (strace -c, the same difference); the kernel's share
  ns        wall time per call, best of --repeats runs of --calls calls; on a shared machine
            this one is noisy (differences under ~100 ns mean little)

    .venv/bin/python benchmarks/bench_interposer_calls.py [--baseline-ref main] [--calls 200000]

Prints a table and writes benchmarks/results/interposer_calls.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from _common import write_results

C_FLAGS = ["-O2", "-fvisibility=hidden", "-std=gnu11", "-pthread", "-shared", "-fPIC"]

LOOP = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define TIME(name, body)                                                                    \
    do {                                                                                    \
        if (only != NULL && strcmp(only, name) != 0)                                        \
            break;                                                                          \
        double best = 1e18;                                                                 \
        for (int r = 0; r < repeats; r++) {                                                 \
            double t0 = now_ns();                                                           \
            for (long i = 0; i < calls; i++) { body; }                                      \
            double dt = (now_ns() - t0) / calls;                                            \
            if (dt < best) best = dt;                                                       \
        }                                                                                   \
        printf("%s %.1f\n", name, best);                                                    \
    } while (0)

int main(int argc, char **argv)
{
    long calls = atol(argv[1]);
    int repeats = atoi(argv[2]);
    const char *only = argc > 3 ? argv[3] : NULL;
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    int efd = eventfd(0, EFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    struct sockaddr_storage ss;
    socklen_t len;
    TIME("getpid (raw syscall, for scale)", getpid());
    TIME("close(-1)", close(-1));
    TIME("fcntl(F_GETFL) tracked socket", fcntl(tcp, F_GETFL));
    TIME("fcntl(F_GETFL) eventfd", fcntl(efd, F_GETFL));
    TIME("getsockname tracked socket", (len = sizeof ss, getsockname(tcp, (struct sockaddr *)&ss, &len)));
    TIME("epoll_ctl(MOD) eventfd", epoll_ctl(ep, EPOLL_CTL_MOD, efd, &ev));
    TIME("dup+close eventfd", close(dup(efd)));
    return 0;
}
"""


def build_lib(sources: dict[str, str], out: Path) -> None:
    d = out.parent / (out.stem + "-src")
    d.mkdir()
    for name, text in sources.items():
        (d / name).write_text(text)
    subprocess.run(["gcc", *C_FLAGS, "-o", str(out), *sorted(str(p) for p in d.glob("*.c")), "-ldl"], check=True)


def sources_at(ref: str) -> dict[str, str]:
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:interposer"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:interposer/{n}"], capture_output=True,
                              text=True, check=True).stdout
            for n in names if n.endswith((".c", ".h"))}


def sources_now() -> dict[str, str]:
    return {p.name: p.read_text() for p in (ROOT / "interposer").iterdir() if p.suffix in (".c", ".h")}


def run_loop(prog: Path, lib: Path | None, calls: int, repeats: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXER_") and k != "LD_PRELOAD"}
    if lib is not None:
        env.update(LD_PRELOAD=str(lib), BOXER_AGENT_SOCK="/nonexistent/agent.sock", BOXER_LOG="error")
    out = subprocess.run([str(prog), str(calls), str(repeats)], env=env, capture_output=True, text=True, check=True)
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.stdout.splitlines()}


def counted(prog: Path, lib: Path | None, call: str, n: int, tool: str) -> float:
    """Instructions (callgrind) or syscalls (strace) of one run of `call` n times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXER_") and k != "LD_PRELOAD"}
    if lib is not None:
        env.update(BOXER_AGENT_SOCK="/nonexistent/agent.sock", BOXER_LOG="error")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if tool == "callgrind":
            pre = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "-q"]
            if lib is not None:
                pre = [*pre, "--trace-children=no"]
                env["LD_PRELOAD"] = str(lib)
            subprocess.run([*pre, str(prog), str(n), "1", call], env=env, capture_output=True, check=True)
            for line in out.read_text().splitlines():
                if line.startswith("summary:") or line.startswith("totals:"):
                    return float(line.split()[1])
            raise RuntimeError("no totals in callgrind output")
        if lib is not None:
            env["LD_PRELOAD"] = str(lib)
        subprocess.run(["strace", "-c", "-o", str(out), str(prog), str(n), "1", call], env=env,
                       capture_output=True, check=True)
        for line in out.read_text().splitlines():
            if line.strip().endswith("total"):
                fields = line.split()
                return float(fields[3])  # % time, seconds, usecs/call, calls, [errors,] total
        raise RuntimeError("no total in strace output")


def per_call(prog: Path, lib: Path | None, call: str, tool: str, n: int = 2000) -> float:
    return (counted(prog, lib, call, 2 * n, tool) - counted(prog, lib, call, n, tool)) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-ref", default="main", help="git ref whose interposer is the baseline")
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "interposer_calls.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "loop.c").write_text(LOOP)
        subprocess.run(["gcc", "-O2", "-o", str(t / "loop"), str(t / "loop.c")], check=True)
        build_lib(sources_at(args.baseline_ref), t / "baseline.so")
        build_lib(sources_now(), t / "current.so")
        libs = {"none": None, "baseline": t / "baseline.so", "current": t / "current.so"}
        names = list(run_loop(t / "loop", None, 10, 1))
        counts = {tool: {k: {call: per_call(t / "loop", lib, call, tool) for call in names}
                         for k, lib in libs.items()}
                  for tool in ("callgrind", "strace") if shutil.which("valgrind" if tool == "callgrind" else tool)}
        # Interleaved, so slow phases of the shared machine hit all three alike.
        runs: dict[str, list[dict[str, float]]] = {"none": [], "baseline": [], "current": []}
        for _ in range(3):
            runs["none"].append(run_loop(t / "loop", None, args.calls, args.repeats))
            runs["baseline"].append(run_loop(t / "loop", t / "baseline.so", args.calls, args.repeats))
            runs["current"].append(run_loop(t / "loop", t / "current.so", args.calls, args.repeats))
    best = {k: {call: min(r[call] for r in v) for call in v[0]} for k, v in runs.items()}
    tables = {"instr": counts.get("callgrind"), "syscalls": counts.get("strace"), "ns": best}
    print(f"\nper call: none = no preload, base = {args.baseline_ref}, cur = the working tree; "
          f"ns = best of {3 * args.repeats} x {args.calls} calls (noisy)\n")
    head = "".join(f" {unit + ' ' + k:>14}" for unit in tables for k in ("none", "base", "cur") if tables[unit])
    keys = ("none", "baseline", "current")
    print(f"{'call':34}{head}")
    for call in names:
        row = "".join(f" {tables[unit][k][call]:14.1f}" for unit in tables for k in keys if tables[unit])
        print(f"{call:34}{row}")
    write_results(args.out, {"baseline_ref": args.baseline_ref, "calls": args.calls, "repeats": args.repeats,
                             **{f"{unit}_per_call": table for unit, table in tables.items() if table}})


if __name__ == "__main__":
    main()

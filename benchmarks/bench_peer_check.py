#!/usr/bin/env python3
"""What the agent's peer check (boxer/agent/peercheck.c) costs per IPC connection.

The interposer opens one Unix connection to the agent per request, and the agent's fast path
checks each one before reading it. A small C program (below), linked with the real peercheck.c,
serves the exchange the interposer makes (connect, a 300-byte request, a 300-byte reply, close)
to clients `depth` levels below it (1: its child), in five modes:

  nocheck     one client process, N connections, no check: the fast path before it (baseline)
  repeat      the same with the check: after its first connection the client is remembered
              (a getsockopt and a poll)
  fresh       a new process per connection (forked by the last of the chain, which never
              connected): the whole walk up the chain, every time (the worst case)
  fresh-hello the same, but every process of the chain connected once first, as each process
              the interposer runs in does (HELLO): the walk stops at the remembered parent
  outside     one client outside the tree (its parent exited): refused, closed unread, the walk
              up to init each time

Per mode and depth: the check's own time per connection (clock_gettime around it; HELLOs not
counted) and, for nocheck and repeat, the whole round trip as the client sees it. Medians of
--runs runs, modes interleaved so that slow phases of the shared machine hit them alike.

    .venv/bin/python benchmarks/bench_peer_check.py [--connections 2000] [--runs 5]

Prints a table and writes benchmarks/results/peer_check.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from _common import write_results

PROGRAM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "peercheck.h"

static struct sockaddr_un sun = {.sun_family = AF_UNIX};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void exchange(void)
{
    char buf[300] = {0};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (const struct sockaddr *)&sun, sizeof sun) < 0)
        _exit(3);
    (void)!send(s, buf, sizeof buf, MSG_NOSIGNAL);
    size_t got = 0;
    ssize_t r;
    while (got < sizeof buf && (r = recv(s, buf + got, sizeof buf - got, 0)) > 0)
        got += (size_t)r;
    close(s);
}

static void client(long n, int fresh, int report)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (!fresh) {
            exchange();
            continue;
        }
        pid_t c = fork();
        if (c == 0) {
            exchange();
            _exit(0);
        }
        waitpid(c, NULL, 0);
    }
    double per = (now_ns() - t0) / n;
    (void)!write(report, &per, sizeof per);
    _exit(0);
}

/* `depth` processes below the server; the last one is the client. hello: each connects once
 * first. outside: the first leaves the server's tree (its parent exits, it is re-parented). */
static void chain(int depth, int outside, int hello, int fresh, long n, int report)
{
    if (outside) {
        pid_t parent = getpid();
        if (fork() != 0)
            _exit(0);
        while (getppid() == parent)
            usleep(1000);
    }
    if (hello)
        exchange();
    if (depth <= 1)
        client(n, fresh, report);
    pid_t child = fork();
    if (child == 0)
        chain(depth - 1, 0, hello, fresh, n, report);
    waitpid(child, NULL, 0);
    _exit(0);
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    int depth = atoi(argv[1]);
    long n = atol(argv[2]);
    const char *mode = argv[3];
    int check = strcmp(mode, "nocheck") != 0, outside = strcmp(mode, "outside") == 0;
    int hello = strcmp(mode, "fresh-hello") == 0, fresh = strncmp(mode, "fresh", 5) == 0;
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", argv[4]);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(sun.sun_path);
    if (l < 0 || bind(l, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(l, 1024) < 0)
        return 2;
    int pipefd[2];
    if (pipe(pipefd) < 0)
        return 2;
    pid_t first = fork();
    if (first == 0)
        chain(depth, outside, hello, fresh, n, pipefd[1]);
    char buf[300];
    double checking = 0;
    long refused = 0, hellos = hello ? depth : 0;
    for (long i = 0; i < n + hellos; i++) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            return 2;
        if (check) {
            struct bx_peer who;
            double t0 = now_ns();
            int ok = bx_peer_allowed(c, getpid(), &who);
            if (i >= hellos)
                checking += now_ns() - t0;
            if (!ok) {
                refused++;
                close(c);
                continue;
            }
        }
        size_t got = 0;
        ssize_t r;
        while (got < sizeof buf && (r = recv(c, buf + got, sizeof buf - got, 0)) > 0)
            got += (size_t)r;
        (void)!send(c, buf, sizeof buf, MSG_NOSIGNAL);
        close(c);
    }
    double round_trip;
    if (read(pipefd[0], &round_trip, sizeof round_trip) != sizeof round_trip)
        return 2;
    waitpid(first, NULL, 0);
    printf("%.1f %.1f %ld\n", checking / n, round_trip, refused);
    return 0;
}
"""

MODES = ("nocheck", "repeat", "fresh", "fresh-hello", "outside")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--depths", default="1,2,4,8", help="levels between the client and the agent")
    ap.add_argument("--out", default=str(HERE / "results" / "peer_check.json"))
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    samples: dict[str, dict[int, list[tuple[float, float, int]]]] = {m: {d: [] for d in depths} for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "bench.c").write_text(PROGRAM)
        subprocess.run(["gcc", "-O2", "-std=gnu11", f"-I{ROOT / 'boxer' / 'agent'}", "-o", str(t / "bench"),
                        str(t / "bench.c"), str(ROOT / "boxer" / "agent" / "peercheck.c")], check=True)
        for _ in range(args.runs):
            for depth in depths:
                for mode in MODES:
                    out = subprocess.run([str(t / "bench"), str(depth), str(args.connections), mode,
                                          str(t / "agent.sock")], capture_output=True, text=True, check=True)
                    check_ns, round_trip_ns, refused = out.stdout.split()
                    samples[mode][depth].append((float(check_ns), float(round_trip_ns), int(refused)))
    results: dict[str, dict[str, float]] = {}
    print(f"\nns per connection, median of {args.runs} runs x {args.connections} connections "
          "(depth: levels between the client and the agent, 1 = its child)\n")
    print(f"{'depth':>5} {'round trip':>11} {'round trip':>11} {'check:':>8} {'':>8} {'fresh,':>8} "
          f"{'outside':>8}")
    print(f"{'':>5} {'nocheck':>11} {'repeat':>11} {'repeat':>8} {'fresh':>8} {'hello':>8} {'refused':>8}")
    for depth in depths:
        row: dict[str, float] = {}
        for mode in MODES:
            row[f"{mode}_check_ns"] = statistics.median(s[0] for s in samples[mode][depth])
            row[f"{mode}_round_trip_ns"] = statistics.median(s[1] for s in samples[mode][depth])
            row[f"{mode}_refused"] = statistics.median(s[2] for s in samples[mode][depth])
        assert row["outside_refused"] == args.connections and row["fresh_refused"] == 0, row
        results[str(depth)] = row
        print(f"{depth:>5} {row['nocheck_round_trip_ns']:>11.0f} {row['repeat_round_trip_ns']:>11.0f} "
              f"{row['repeat_check_ns']:>8.0f} {row['fresh_check_ns']:>8.0f} {row['fresh-hello_check_ns']:>8.0f} "
              f"{row['outside_check_ns']:>8.0f}")
    write_results(args.out, {"connections": args.connections, "runs": args.runs, "per_depth": results})


if __name__ == "__main__":
    main()

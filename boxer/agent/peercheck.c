/* Who may talk to the agent: the agent itself and its descendants, nobody else.
 *
 * Why not file permissions: the app's descendants change uid and gid (runuser, su, setpriv,
 * gosu, a server's own `user nobody;`, postgres refusing to run as root), and each of them must
 * still reach the agent, so the socket is 0666 in a 0711 directory (boxer/agent/ipc_server.py).
 * The boundary is this check, made by the fast path's thread on every connection it accepts,
 * before it reads the request: a refused peer's connection is closed unread, so it gets no
 * answer and no descriptor, and any descriptor it sent along is discarded by the kernel.
 *
 * The tree is the agent's, not the app's: the agent is the child subreaper, so a daemon whose
 * parent exited (redis --daemonize) is re-parented to the agent and stays in it, and the app's
 * pid is not known yet when its first HELLO arrives. The agent starts nothing else that
 * connects here.
 *
 * How: SO_PEERCRED names the process that called connect(); we walk /proc/PID/stat's parent
 * links up to the agent. Pids are reused, so two checks keep the walk about the right
 * processes:
 *  - the connector may have exited and its pid been taken by a descendant of the agent before
 *    we look. SO_PEERPIDFD (Linux 6.5) gives a pidfd for the connector itself; after the walk,
 *    the pidfd not readable (poll) means that process had not exited, so the pid we walked from
 *    was its own all along. Without SO_PEERPIDFD (older kernels) the window left is between the
 *    peer's connect() and our accept(), which the thread makes as soon as epoll says so;
 *  - an ancestor may exit during the walk and its pid be reused: a parent whose start time is
 *    later than its child's is not the parent it was, and the walk is refused (then retried once:
 *    the child has been re-parented, possibly to the agent).
 *
 * Cost: on this project's VMs a /proc/PID/stat read is ~9 us and SO_PEERPIDFD ~6 us, so a walk
 * costs tens of microseconds, against ~50-250 us for the whole exchange. Processes found allowed
 * are remembered by pidfd (CACHE_SIZE of them): while a remembered process has not exited, its
 * pid is its own, so a connection whose SO_PEERCRED names that pid is from it (one getsockopt and
 * one poll, ~1 us), and a walk that reaches a remembered ancestor stops there. Every process
 * the interposer runs in says HELLO when it starts, so a fresh child (a forked postgres
 * backend) usually has a remembered parent. Measured by benchmarks/bench_peer_check.py (figures
 * in docs/security.md). */
#define _GNU_SOURCE
#include "peercheck.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; Debian 12's headers predate it */
#endif

#define MAX_DEPTH 256 /* deeper than any real process tree; a loop is refused, not followed */
#define CACHE_SIZE 16 /* descriptors the agent holds for it (Lambda allows 1024 in all) */

/* Processes found allowed, by pidfd. Used by the fast path's thread only (no lock). */
static struct {
    pid_t root; /* the tree these were found in */
    pid_t pid[CACHE_SIZE];
    int pidfd[CACHE_SIZE]; /* -1: free */
    unsigned next;         /* the slot replaced when none is free */
    bool ready;
} cache;

static bool exited(int pidfd)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    return n != 0; /* readable (exited), or the pidfd is unusable: trust it no more */
}

static void cache_reset(pid_t root)
{
    for (int i = 0; i < CACHE_SIZE; i++) {
        if (cache.ready && cache.pidfd[i] >= 0)
            close(cache.pidfd[i]);
        cache.pidfd[i] = -1;
        cache.pid[i] = 0;
    }
    cache.root = root;
    cache.next = 0;
    cache.ready = true;
}

/* A remembered process with this pid that is still alive (then the pid is its own). Entries of
 * processes that exited are dropped on the way. */
static bool remembered(pid_t pid)
{
    for (int i = 0; i < CACHE_SIZE; i++) {
        if (cache.pidfd[i] < 0 || cache.pid[i] != pid)
            continue;
        if (!exited(cache.pidfd[i]))
            return true;
        close(cache.pidfd[i]);
        cache.pidfd[i] = -1;
    }
    return false;
}

/* Takes pidfd. */
static void remember(pid_t pid, int pidfd)
{
    int slot = -1;
    for (int i = 0; i < CACHE_SIZE && slot < 0; i++)
        if (cache.pidfd[i] < 0)
            slot = i;
    for (int i = 0; i < CACHE_SIZE && slot < 0; i++)
        if (exited(cache.pidfd[i]))
            slot = i;
    if (slot < 0)
        slot = (int)(cache.next++ % CACHE_SIZE);
    if (cache.pidfd[slot] >= 0)
        close(cache.pidfd[slot]);
    cache.pid[slot] = pid;
    cache.pidfd[slot] = pidfd;
}

struct proc_stat {
    pid_t ppid;
    unsigned long long start; /* clock ticks after boot */
};

static int read_stat(pid_t pid, struct proc_stat *st)
{
    char path[32], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the
     * last ')'. starttime is field 22; fields 5-21 are skipped. */
    const char *p = strrchr(buf, ')');
    int ppid;
    if (p == NULL ||
        sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
               &ppid, &st->start) != 2)
        return -1;
    st->ppid = ppid;
    return 0;
}

/* Whether pid descends from root. A remembered ancestor ends the walk: alive after we read its
 * pid as a parent, so that parent was it. (The peer itself is not looked up here: its own
 * identity is the pidfd's to prove.) */
static bool descends_from(pid_t pid, pid_t root)
{
    unsigned long long child_start = ~0ULL;
    for (int depth = 0; depth < MAX_DEPTH; depth++) {
        if (pid == root || (depth > 0 && remembered(pid)))
            return true;
        if (pid <= 1)
            return false; /* init, or a pid the kernel could not name for us */
        struct proc_stat st;
        if (read_stat(pid, &st) < 0)
            return false;
        if (st.start > child_start)
            return false; /* younger than its child: the pid was reused during the walk */
        child_start = st.start;
        pid = st.ppid;
    }
    return false;
}

bool bx_peer_allowed(int fd, pid_t root, struct bx_peer *who)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    who->pid = 0;
    who->uid = (uid_t)-1;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return false;
    who->pid = cred.pid;
    who->uid = cred.uid;
    if (!cache.ready || cache.root != root)
        cache_reset(root);
    if (cred.pid == root)
        return true; /* the agent itself */
    if (cred.pid > 0 && remembered(cred.pid))
        return true; /* alive since it was found allowed: the connector is that process */
    int pidfd = -1;
    len = sizeof pidfd;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) {
        if (errno != ENOPROTOOPT && errno != EINVAL)
            return false; /* ESRCH: the connector is gone; whoever holds its connection now is unknown */
        pidfd = -1;       /* an older kernel: the window in the comment above remains */
    }
    /* Twice at most: a walk refused because an ancestor's pid was reused may pass once the
     * child has been re-parented (possibly to the agent). */
    bool ok = descends_from(cred.pid, root) || descends_from(cred.pid, root);
    if (ok && pidfd >= 0)
        ok = !exited(pidfd); /* the connector still alive: the pid we walked from was its own */
    if (ok && pidfd >= 0)
        remember(cred.pid, pidfd);
    else if (pidfd >= 0)
        close(pidfd);
    return ok;
}

void bx_peer_forget(void)
{
    if (cache.ready)
        cache_reset(0);
}

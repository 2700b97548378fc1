/* Test program for the interposer: one scenario per subcommand, run with the interposer
 * preloaded against tests/fake_agent.py. It checks return codes and errno itself (CHECK exits
 * 1 with the reason on stderr) and prints "key=value" lines for the Python side to assert. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            int e_ = errno;                                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, " (errno %d: %s)\n", e_, strerror(e_));                            \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static void say(const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s=", key);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static const char *errname(int e)
{
    switch (e) {
    case 0: return "OK";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ECONNABORTED: return "ECONNABORTED";
    case EISCONN: return "EISCONN";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ERANGE: return "ERANGE";
    case EBADF: return "EBADF";
    case ENOTCONN: return "ENOTCONN";
    case EINPROGRESS: return "EINPROGRESS";
    case EALREADY: return "EALREADY";
    default: return strerror(e);
    }
}

static const char *gainame(int rc)
{
    switch (rc) {
    case 0: return "OK";
    case EAI_NONAME: return "EAI_NONAME";
    case EAI_SERVICE: return "EAI_SERVICE";
    case EAI_SOCKTYPE: return "EAI_SOCKTYPE";
    case EAI_FAMILY: return "EAI_FAMILY";
    case EAI_AGAIN: return "EAI_AGAIN";
    case EAI_OVERFLOW: return "EAI_OVERFLOW";
    case EAI_BADFLAGS: return "EAI_BADFLAGS";
    default: return gai_strerror(rc);
    }
}

/* "addr:port" of a sockaddr, v4-mapped shown as [::ffff:a.b.c.d]:port. */
static const char *fmt_sa(const struct sockaddr *sa)
{
    static __thread char out[2][80];
    static __thread int which;
    char *buf = out[which++ & 1];
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, 80, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, 80, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, 80, "family%d", sa->sa_family);
    }
    return buf;
}

static const char *sockname(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return errname(errno);
    return fmt_sa((struct sockaddr *)&ss);
}

static const char *peername(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return errname(errno);
    return fmt_sa((struct sockaddr *)&ss);
}

/* Drops a marker into the fake agent's request log (a RESOLVE of "mark.<what>"). */
static void mark(const char *what)
{
    char name[128];
    snprintf(name, sizeof name, "mark.%s", what);
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, NULL, NULL, &res);
    CHECK(rc == EAI_NONAME, "marker %s: %s", name, gainame(rc));
}

static struct sockaddr_storage make_addr(int family, const char *ip, int port, socklen_t *len)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (void *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        char mapped[64];
        if (strchr(ip, ':') == NULL)
            snprintf(mapped, sizeof mapped, "::ffff:%s", ip);
        else
            snprintf(mapped, sizeof mapped, "%s", ip);
        CHECK(inet_pton(AF_INET6, mapped, &in6->sin6_addr) == 1, "bad address %s", mapped);
        *len = sizeof *in6;
    } else {
        struct sockaddr_in *in = (void *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        CHECK(inet_pton(AF_INET, ip, &in->sin_addr) == 1, "bad address %s", ip);
        *len = sizeof *in;
    }
    return ss;
}

/* Writes msg and reads the echo back (the peer echoes). */
static void echo_roundtrip(int fd, const char *msg)
{
    size_t n = strlen(msg);
    CHECK(write(fd, msg, n) == (ssize_t)n, "write");
    char buf[256];
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, sizeof buf - got);
        if (r < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 5000);
            continue;
        }
        CHECK(r > 0, "read echo (got %zu of %zu)", got, n);
        got += (size_t)r;
    }
    CHECK(memcmp(buf, msg, n) == 0, "echo mismatch");
}

/* ---- scenarios ------------------------------------------------------------------------- */

/* connect FAMILY ADDR PORT [nonblock] [cloexec]: connect at a fixed fd number, check it stays. */
static int cmd_connect(int argc, char **argv)
{
    CHECK(argc >= 3, "usage: connect inet|inet6 addr port [nonblock] [cloexec]");
    int family = strcmp(argv[0], "inet6") == 0 ? AF_INET6 : AF_INET;
    int type = SOCK_STREAM;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "nonblock") == 0)
            type |= SOCK_NONBLOCK;
        if (strcmp(argv[i], "cloexec") == 0)
            type |= SOCK_CLOEXEC;
    }
    int fd = socket(family, type, 0);
    CHECK(fd >= 0, "socket");
    /* Move it to a known number so we can see it is preserved. */
    CHECK(dup3(fd, 77, (type & SOCK_CLOEXEC) ? O_CLOEXEC : 0) == 77, "dup3");
    CHECK(close(fd) == 0, "close");
    fd = 77;
    socklen_t len;
    struct sockaddr_storage dst = make_addr(family, argv[1], atoi(argv[2]), &len);
    int rc = connect(fd, (struct sockaddr *)&dst, len);
    say("connect", "%s", rc == 0 ? "OK" : errname(errno));
    if (rc != 0) {
        CHECK(rc == -1, "connect returned %d", rc);
        return 0;
    }
    say("fd_open", "%d", fcntl(fd, F_GETFD) >= 0);
    say("nonblock", "%d", (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    say("cloexec", "%d", (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    say("sockname", "%s", sockname(fd));
    say("peername", "%s", peername(fd));
    /* Kernel-style truncation: a short buffer gets the start and the full length. */
    struct sockaddr_in small;
    socklen_t slen = 4;
    memset(&small, 0xAA, sizeof small);
    CHECK(getpeername(fd, (struct sockaddr *)&small, &slen) == 0, "getpeername short");
    say("short_len", "%u", slen);
    say("short_untouched", "%d", ((unsigned char *)&small)[4] == 0xAA);
    /* A second connect on a connected socket. */
    errno = 0;
    rc = connect(fd, (struct sockaddr *)&dst, len);
    say("reconnect", "%s", rc == 0 ? "OK" : errname(errno));
    echo_roundtrip(fd, "ping through the app's own fd");
    say("echo", "OK");
    CHECK(close(fd) == 0, "close");
    return 0;
}

static long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

/* aconnect FAMILY ADDR PORT poll|select|epoll|epollet [early] [nodelay] [closefirst]:
 * a non-blocking connect completed through the app's own event loop, as event loops do it:
 * EINPROGRESS, wait for writability, SO_ERROR. "early" registers with epoll before connect
 * (nginx does); "nodelay" sets TCP_NODELAY while the connect is in progress; "closefirst"
 * closes the fd right after EINPROGRESS and checks the number's next owner is left alone. */
static int cmd_aconnect(int argc, char **argv)
{
    CHECK(argc >= 4, "usage: aconnect inet|inet6 addr port poll|select|epoll|epollet [opts]");
    int family = strcmp(argv[0], "inet6") == 0 ? AF_INET6 : AF_INET;
    const char *mode = argv[3];
    bool early = false, nodelay = false, closefirst = false;
    for (int i = 4; i < argc; i++) {
        early |= strcmp(argv[i], "early") == 0;
        nodelay |= strcmp(argv[i], "nodelay") == 0;
        closefirst |= strcmp(argv[i], "closefirst") == 0;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "socket");
    int ep = -1;
    bool use_epoll = strncmp(mode, "epoll", 5) == 0;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u64 = 0xfeed};
    if (strcmp(mode, "epollet") == 0)
        ev.events |= EPOLLET;
    if (use_epoll) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        CHECK(ep >= 0, "epoll_create1");
        if (early)
            CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl early");
    }
    socklen_t len;
    struct sockaddr_storage dst = make_addr(family, argv[1], atoi(argv[2]), &len);
    long t0 = now_us();
    int rc = connect(fd, (struct sockaddr *)&dst, len);
    long t1 = now_us();
    say("connect", "%s", rc == 0 ? "OK" : errname(errno));
    say("stall_us", "%ld", t1 - t0);
    if (rc != 0 && errno != EINPROGRESS)
        return 0;
    if (rc != 0) {
        errno = 0;
        int again = connect(fd, (struct sockaddr *)&dst, len);
        say("connect_again", "%s", again == 0 ? "OK" : errname(errno));
        say("peername_pending", "%s", peername(fd));
    }
    if (closefirst) {
        CHECK(close(fd) == 0, "close pending");
        int other = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(other == fd, "the number was not reused (%d vs %d)", other, fd);
        usleep(300000); /* the agent answers meanwhile */
        struct pollfd p = {.fd = other, .events = POLLOUT};
        CHECK(poll(&p, 1, 0) == 1, "poll other");
        /* A fresh unconnected socket: POLLOUT|POLLHUP, and no peer. */
        say("other_revents_hup", "%d", (p.revents & POLLHUP) != 0);
        say("other_peername", "%s", peername(other));
        close(other);
        return 0;
    }
    if (nodelay) {
        int one = 1;
        CHECK(setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "nodelay");
    }
    if (use_epoll && !early)
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    long t2 = now_us();
    if (rc != 0) {
        if (use_epoll) {
            struct epoll_event out;
            int n = epoll_wait(ep, &out, 1, 10000);
            CHECK(n == 1, "epoll_wait: %d events", n);
            say("wake_data", "%llx", (unsigned long long)out.data.u64);
            say("wake_out", "%d", (out.events & EPOLLOUT) != 0);
            say("wake_hup", "%d", (out.events & EPOLLHUP) != 0);
        } else if (strcmp(mode, "select") == 0) {
            fd_set w;
            FD_ZERO(&w);
            FD_SET(fd, &w);
            struct timeval tv = {.tv_sec = 10};
            CHECK(select(fd + 1, NULL, &w, NULL, &tv) == 1, "select");
            say("wake_out", "%d", FD_ISSET(fd, &w) != 0);
        } else {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            CHECK(poll(&p, 1, 10000) == 1, "poll");
            say("wake_out", "%d", (p.revents & POLLOUT) != 0);
            say("wake_hup", "%d", (p.revents & POLLHUP) != 0);
        }
    }
    say("wait_us", "%ld", now_us() - t2);
    int err = -1, err2 = -1;
    socklen_t elen = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0, "SO_ERROR");
    say("so_error", "%s", errname(err));
    elen = sizeof err2;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err2, &elen) == 0, "SO_ERROR 2");
    say("so_error_again", "%s", errname(err2)); /* SO_ERROR is read-and-clear */
    if (err != 0) {
        close(fd);
        return 0;
    }
    errno = 0;
    rc = connect(fd, (struct sockaddr *)&dst, len);
    say("connect_after", "%s", rc == 0 ? "OK" : errname(errno));
    errno = 0;
    rc = connect(fd, (struct sockaddr *)&dst, len);
    say("connect_after2", "%s", rc == 0 ? "OK" : errname(errno));
    int nd = 0;
    socklen_t ndlen = sizeof nd;
    CHECK(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nd, &ndlen) == 0, "get nodelay");
    say("nodelay", "%d", nd != 0);
    say("nonblock", "%d", (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    say("cloexec", "%d", (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    say("sockname", "%s", sockname(fd));
    say("peername", "%s", peername(fd));
    echo_roundtrip(fd, "ping through the async-connected fd");
    say("echo", "OK");
    if (use_epoll) {
        /* The registration followed the swap: MOD finds it (ENOENT otherwise) and the echo's
         * answer wakes the same epoll set. */
        struct epoll_event in = {.events = EPOLLIN, .data.u64 = 0xfeed};
        CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, fd, &in) == 0, "epoll_ctl MOD after the swap");
        CHECK(write(fd, "x", 1) == 1, "write");
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, 5000);
        say("epoll_after", "%d", n == 1 && (out.events & EPOLLIN) && out.data.u64 == 0xfeed);
        close(ep);
    }
    close(fd);
    return 0;
}

static int count_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 4096; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

/* aburst ADDR PORT N: N non-blocking overlay connects at once under RLIMIT_NOFILE 1024, all
 * waited for with one poll() set; no descriptor may leak or run out. */
static int cmd_aburst(int argc, char **argv)
{
    CHECK(argc >= 3, "usage: aburst addr port n");
    int n = atoi(argv[2]);
    struct rlimit rl = {.rlim_cur = 1024, .rlim_max = 1024};
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
    int before = count_fds();
    int *fds = calloc((size_t)n, sizeof *fds);
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    int inprogress = 0, ok = 0, failed = 0;
    socklen_t len;
    struct sockaddr_storage dst = make_addr(AF_INET, argv[0], atoi(argv[1]), &len);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        CHECK(fds[i] >= 0, "socket %d", i);
        int rc = connect(fds[i], (struct sockaddr *)&dst, len);
        if (rc == 0)
            ok++;
        else if (errno == EINPROGRESS)
            inprogress++;
        else
            CHECK(0, "connect %d", i);
        p[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
    }
    int pending = n;
    while (pending > 0) {
        CHECK(poll(p, (nfds_t)n, 10000) > 0, "poll timed out with %d pending", pending);
        for (int i = 0; i < n; i++) {
            if (p[i].fd < 0 || p[i].revents == 0)
                continue;
            int err = -1;
            socklen_t elen = sizeof err;
            CHECK(getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &elen) == 0, "SO_ERROR");
            if (err != 0)
                failed++;
            p[i].fd = -1;
            pending--;
        }
    }
    say("inprogress", "%d", inprogress);
    say("immediate", "%d", ok);
    say("failed", "%d", failed);
    /* The worker closes its transient copies (the agent's socket, the placeholder) right after
     * the swap that woke us: give it a moment before counting. */
    usleep(200000);
    say("fds_open", "%d", count_fds() - before);
    for (int i = 0; i < n; i++)
        echo_roundtrip(fds[i], "burst");
    for (int i = 0; i < n; i++)
        close(fds[i]);
    say("fds_leaked", "%d", count_fds() - before);
    return 0;
}

extern char **environ;

/* The children that share our memory (issue 12): each calls the interposer from a CLONE_VM
 * child, which must leave our fd table alone. */
static int vm_child_closes(void *arg)
{
    (void)arg;
    close_range(3, ~0U, 0); /* its own fds (no CLONE_FILES): what CPython's child does */
    return 0;
}

static void spawn_children(void)
{
    char *true_argv[] = {"true", NULL};
    pid_t pid;
    CHECK(posix_spawn(&pid, "/bin/true", NULL, NULL, true_argv, environ) == 0, "posix_spawn");
    CHECK(waitpid(pid, NULL, 0) == pid, "waitpid posix_spawn");
    CHECK(posix_spawnp(&pid, "true", NULL, NULL, true_argv, environ) == 0, "posix_spawnp");
    CHECK(waitpid(pid, NULL, 0) == pid, "waitpid posix_spawnp");
    pid = vfork();
    if (pid == 0) { /* CPython's _posixsubprocess: close_range, then exec */
        close_range(3, ~0U, 0);
        execve("/bin/true", true_argv, environ);
        _exit(127);
    }
    CHECK(pid > 0 && waitpid(pid, NULL, 0) == pid, "vfork");
    pid = vfork();
    if (pid == 0) { /* no exec: closes one by one, then leaves */
        for (int fd = 3; fd < 64; fd++)
            close(fd);
        _exit(0);
    }
    CHECK(pid > 0 && waitpid(pid, NULL, 0) == pid, "vfork");
    static char stack[64 * 1024] __attribute__((aligned(16)));
    pid = clone(vm_child_closes, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
    CHECK(pid > 0 && waitpid(pid, NULL, 0) == pid, "clone(CLONE_VM)");
    say("spawned", "5");
}

/* listen FAMILY BINDADDR ACCEPTMODE COUNT [spawn]: bind (or not: "-"), listen, accept COUNT
 * connections and echo on each. ACCEPTMODE: accept | accept4 | poll | epoll. spawn: first
 * start children that share our memory (posix_spawn, vfork, clone(CLONE_VM)). */
static int cmd_listen(int argc, char **argv)
{
    CHECK(argc >= 4, "usage: listen inet|inet6 bindaddr|- accept|accept4|poll|epoll count");
    int family = strcmp(argv[0], "inet6") == 0 ? AF_INET6 : AF_INET;
    const char *mode = argv[2];
    int count = atoi(argv[3]);
    bool nonblock_listener = strcmp(mode, "poll") == 0 || strcmp(mode, "epoll") == 0;
    int lfd = socket(family, SOCK_STREAM | (nonblock_listener ? SOCK_NONBLOCK : 0), 0);
    CHECK(lfd >= 0, "socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (strcmp(argv[1], "-") != 0) {
        socklen_t len;
        struct sockaddr_storage a = make_addr(family, argv[1], 0, &len);
        int rc = bind(lfd, (struct sockaddr *)&a, len);
        say("bind", "%s", rc == 0 ? "OK" : errname(errno));
        if (rc != 0)
            return 0;
    }
    CHECK(listen(lfd, 16) == 0, "listen");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    CHECK(getsockname(lfd, (struct sockaddr *)&ss, &sl) == 0, "getsockname");
    say("listener", "%s", fmt_sa((struct sockaddr *)&ss));
    say("port", "%u", ntohs(((struct sockaddr_in *)&ss)->sin_port)); /* same offset in v6 */
    if (argc >= 5 && strcmp(argv[4], "spawn") == 0)
        spawn_children();

    int ep = -1;
    if (strcmp(mode, "epoll") == 0) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == 0, "epoll_ctl");
    }
    for (int i = 0; i < count; i++) {
        if (strcmp(mode, "poll") == 0) {
            struct pollfd p = {.fd = lfd, .events = POLLIN};
            CHECK(poll(&p, 1, 10000) == 1 && (p.revents & POLLIN), "poll did not wake");
        } else if (ep >= 0) {
            struct epoll_event ev;
            CHECK(epoll_wait(ep, &ev, 1, 10000) == 1 && ev.data.fd == lfd, "epoll did not wake");
        }
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        memset(&peer, 0, sizeof peer);
        int cfd;
        if (strcmp(mode, "accept") == 0)
            cfd = accept(lfd, (struct sockaddr *)&peer, &plen);
        else
            cfd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            say("accept", "%s", errname(errno));
            continue;
        }
        say("accept", "OK");
        say("accept_addr", "%s", fmt_sa((struct sockaddr *)&peer));
        say("accept_len", "%u", plen);
        say("nonblock", "%d", (fcntl(cfd, F_GETFL) & O_NONBLOCK) != 0);
        say("cloexec", "%d", (fcntl(cfd, F_GETFD) & FD_CLOEXEC) != 0);
        say("sockname", "%s", sockname(cfd));
        say("peername", "%s", peername(cfd));
        /* Echo what the peer sends, once. */
        char buf[256];
        ssize_t n;
        for (;;) {
            n = read(cfd, buf, sizeof buf);
            if (n < 0 && errno == EAGAIN) {
                struct pollfd p = {.fd = cfd, .events = POLLIN};
                poll(&p, 1, 10000);
                continue;
            }
            break;
        }
        CHECK(n > 0, "read from accepted");
        CHECK(write(cfd, buf, (size_t)n) == n, "write echo");
        CHECK(close(cfd) == 0, "close accepted");
    }
    if (ep >= 0)
        close(ep);
    mark("before-close");
    CHECK(close(lfd) == 0, "close listener");
    mark("after-close");
    say("done", "1");
    return 0;
}

/* bind FAMILY ADDR: bind to an address, report the result and getsockname. */
static int cmd_bind(int argc, char **argv)
{
    CHECK(argc >= 2, "usage: bind inet|inet6 addr");
    int family = strcmp(argv[0], "inet6") == 0 ? AF_INET6 : AF_INET;
    int fd = socket(family, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket");
    socklen_t len;
    struct sockaddr_storage a = make_addr(family, argv[1], 0, &len);
    int rc = bind(fd, (struct sockaddr *)&a, len);
    say("bind", "%s", rc == 0 ? "OK" : errname(errno));
    if (rc == 0)
        say("sockname", "%s", sockname(fd));
    close(fd);
    return 0;
}

/* dup: the table follows dup/dup2/dup3/fcntl/close; UNLISTEN only on the last close. */
static int cmd_dup(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(lfd >= 0, "socket");
    CHECK(listen(lfd, 4) == 0, "listen");
    int a = dup(lfd);
    CHECK(a >= 0, "dup");
    CHECK(dup2(lfd, 90) == 90, "dup2");
    int b = fcntl(lfd, F_DUPFD_CLOEXEC, 100);
    CHECK(b >= 100, "F_DUPFD_CLOEXEC");
    CHECK(dup3(lfd, 95, O_CLOEXEC) == 95, "dup3");
    CHECK(close(lfd) == 0, "close");
    mark("closed-original");
    CHECK(close(a) == 0 && close(90) == 0 && close(b) == 0, "close dups");
    mark("closed-three-dups");
    /* dup2 onto the last reference closes it: that is the last close. */
    int other = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(dup2(other, 95) == 95, "dup2 over listener");
    mark("dup2-over-last");
    CHECK(close(95) == 0 && close(other) == 0, "close");
    /* close_range drops entries too. */
    int l2 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(listen(l2, 4) == 0, "listen 2");
    CHECK(close_range((unsigned)l2, (unsigned)l2, 0) == 0, "close_range");
    mark("close-range");
    /* A stale fd number reused by a non-socket is not reported as ours. */
    CHECK(fcntl(l2, F_GETFD) < 0 && errno == EBADF, "closed");
    /* Closing an fd twice: EBADF like the kernel. */
    errno = 0;
    say("double_close", "%s", close(l2) == 0 ? "OK" : errname(errno));
    return 0;
}

/* dupconn FAMILY ADDR PORT: a dup taken before connect keeps the old (unconnected) socket; a
 * dup taken after shares the overlay addresses. */
static int cmd_dupconn(int argc, char **argv)
{
    CHECK(argc >= 3, "usage: dupconn family addr port");
    int family = strcmp(argv[0], "inet6") == 0 ? AF_INET6 : AF_INET;
    int fd = socket(family, SOCK_STREAM, 0);
    int before = dup(fd);
    socklen_t len;
    struct sockaddr_storage dst = make_addr(family, argv[1], atoi(argv[2]), &len);
    CHECK(connect(fd, (struct sockaddr *)&dst, len) == 0, "connect");
    int after = dup(fd);
    CHECK(dup2(fd, 120) == 120, "dup2");
    say("before_peer", "%s", peername(before));
    say("after_peer", "%s", peername(after));
    say("dup2_peer", "%s", peername(120));
    CHECK(close(fd) == 0, "close");
    say("after_close_peer", "%s", peername(after));
    echo_roundtrip(120, "via dup2");
    say("echo", "OK");
    close(before);
    close(after);
    close(120);
    return 0;
}

static void print_ai(const char *label, int rc, struct addrinfo *res)
{
    printf("gai.%s=%s", label, gainame(rc));
    for (struct addrinfo *ai = rc == 0 ? res : NULL; ai; ai = ai->ai_next) {
        const char *st = ai->ai_socktype == SOCK_STREAM ? "stream"
                         : ai->ai_socktype == SOCK_DGRAM ? "dgram"
                         : ai->ai_socktype == SOCK_RAW   ? "raw"
                                                         : "other";
        printf(" %s/%s/%d/%s", ai->ai_family == AF_INET6 ? "inet6" : "inet", st, ai->ai_protocol,
               fmt_sa(ai->ai_addr));
        CHECK(ai->ai_addrlen == (ai->ai_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in)),
              "ai_addrlen");
        if (ai->ai_canonname)
            printf("/canon:%s", ai->ai_canonname);
    }
    printf("\n");
    fflush(stdout);
}

/* gai NAME: getaddrinfo with many hint combinations; every result freed with freeaddrinfo. */
static int cmd_gai(int argc, char **argv)
{
    CHECK(argc >= 1, "usage: gai name");
    const char *name = argv[0];
    static const struct {
        const char *label;
        int family, socktype, protocol, flags;
        const char *service;
    } cases[] = {
        {"default", AF_UNSPEC, 0, 0, 0, NULL},
        {"inet_stream_80", AF_INET, SOCK_STREAM, 0, 0, "80"},
        {"unspec_6379", AF_UNSPEC, 0, 0, 0, "6379"},
        {"tcp_proto", AF_UNSPEC, 0, IPPROTO_TCP, 0, "7"},
        {"dgram", AF_UNSPEC, SOCK_DGRAM, 0, 0, "53"},
        {"named_service", AF_INET, SOCK_STREAM, 0, 0, "http"},
        {"bad_service", AF_INET, SOCK_STREAM, 0, 0, "no-such-service"},
        {"numericserv_name", AF_INET, SOCK_STREAM, 0, AI_NUMERICSERV, "http"},
        {"canon", AF_INET, SOCK_STREAM, 0, AI_CANONNAME, "1"},
        {"inet6", AF_INET6, SOCK_STREAM, 0, 0, "1"},
        {"inet6_mapped", AF_INET6, SOCK_STREAM, 0, AI_V4MAPPED, "1"},
        {"bad_socktype", AF_INET, 12345, 0, 0, "1"},
        {"raw_service", AF_INET, SOCK_RAW, 0, 0, "1"},
        {"proto_mismatch", AF_INET, SOCK_STREAM, IPPROTO_UDP, 0, "1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct addrinfo hints = {.ai_family = cases[i].family,
                                 .ai_socktype = cases[i].socktype,
                                 .ai_protocol = cases[i].protocol,
                                 .ai_flags = cases[i].flags};
        struct addrinfo *res = NULL;
        int rc = getaddrinfo(name, cases[i].service, &hints, &res);
        print_ai(cases[i].label, rc, res);
        if (rc == 0)
            freeaddrinfo(res);
    }
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, "22", NULL, &res);
    print_ai("null_hints", rc, res);
    if (rc == 0)
        freeaddrinfo(res);
    /* Lists from libc and from us, alive at once, freed in either order. */
    struct addrinfo *ours = NULL, *theirs = NULL;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    int r1 = getaddrinfo(name, "1", &hints, &ours);
    int r2 = getaddrinfo("127.0.0.1", "1", &hints, &theirs);
    int r3 = getaddrinfo("localhost", "1", &hints, &res);
    print_ai("numeric_libc", r2, theirs);
    print_ai("localhost", r3, res);
    if (r2 == 0)
        freeaddrinfo(theirs);
    if (r1 == 0)
        freeaddrinfo(ours);
    if (r3 == 0)
        freeaddrinfo(res);
    freeaddrinfo(NULL); /* glibc tolerates it */
    return 0;
}

static void print_hostent(const char *label, struct hostent *h, int herr)
{
    if (h == NULL) {
        say(label, "NULL h_errno=%d", herr);
        return;
    }
    char addr[INET6_ADDRSTRLEN] = "?";
    if (h->h_addr_list[0])
        inet_ntop(h->h_addrtype, h->h_addr_list[0], addr, sizeof addr);
    say(label, "%s %s %s len=%d n_aliases=%d second=%s", h->h_name,
        h->h_addrtype == AF_INET6 ? "inet6" : "inet", addr, h->h_length,
        h->h_aliases[0] != NULL, h->h_addr_list[0] && h->h_addr_list[1] ? "yes" : "no");
}

/* hostent NAME OVERLAYADDR: the gethostbyname family and gethostbyaddr. */
static int cmd_hostent(int argc, char **argv)
{
    CHECK(argc >= 2, "usage: hostent name addr");
    const char *name = argv[0];
    struct hostent *h = gethostbyname(name);
    print_hostent("ghbn", h, h_errno);
    h = gethostbyname2(name, AF_INET);
    print_hostent("ghbn2_inet", h, h_errno);
    h = gethostbyname2(name, AF_INET6);
    print_hostent("ghbn2_inet6", h, h_errno);
    h = gethostbyname("nx-nothing");
    print_hostent("ghbn_nx", h, h_errno);

    struct hostent ret, *result = NULL;
    char buf[1024];
    int herr = 0;
    int rc = gethostbyname_r(name, &ret, buf, sizeof buf, &result, &herr);
    say("ghbn_r_rc", "%d", rc);
    print_hostent("ghbn_r", result, herr);
    char tiny[8];
    result = (struct hostent *)1;
    rc = gethostbyname_r(name, &ret, tiny, sizeof tiny, &result, &herr);
    say("ghbn_r_tiny", "%s result=%s", errname(rc), result == NULL ? "NULL" : "set");
    result = (struct hostent *)1;
    rc = gethostbyname_r("nx-nothing", &ret, buf, sizeof buf, &result, &herr);
    say("ghbn_r_nx", "rc=%d result=%s h_errno=%d", rc, result == NULL ? "NULL" : "set", herr);
    rc = gethostbyname2_r(name, AF_INET, &ret, buf, sizeof buf, &result, &herr);
    print_hostent("ghbn2_r", rc == 0 ? result : NULL, herr);
    h = gethostbyname("localhost");
    print_hostent("ghbn_localhost", h, h_errno);

    struct in_addr a;
    CHECK(inet_pton(AF_INET, argv[1], &a) == 1, "addr");
    h = gethostbyaddr(&a, 4, AF_INET);
    print_hostent("ghba", h, h_errno);
    CHECK(inet_pton(AF_INET, "100.64.9.9", &a) == 1, "addr");
    h = gethostbyaddr(&a, 4, AF_INET);
    print_hostent("ghba_nx", h, h_errno);
    return 0;
}

/* nameinfo ADDR: getnameinfo on overlay and other addresses. */
static int cmd_nameinfo(int argc, char **argv)
{
    CHECK(argc >= 1, "usage: nameinfo overlayaddr");
    static const struct {
        const char *label;
        int family;
        const char *addr;
        int flags;
        socklen_t hostlen;
    } cases[] = {
        {"overlay", AF_INET, NULL, 0, NI_MAXHOST},
        {"overlay_v6", AF_INET6, NULL, 0, NI_MAXHOST},
        {"numerichost", AF_INET, NULL, NI_NUMERICHOST, NI_MAXHOST},
        {"overflow", AF_INET, NULL, 0, 3},
        {"unknown", AF_INET, "100.64.9.9", 0, NI_MAXHOST},
        {"unknown_namereqd", AF_INET, "100.64.9.9", NI_NAMEREQD, NI_MAXHOST},
        {"loopback", AF_INET, "127.0.0.1", 0, NI_MAXHOST},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        socklen_t len;
        struct sockaddr_storage ss =
            make_addr(cases[i].family, cases[i].addr ? cases[i].addr : argv[0], 80, &len);
        char host[NI_MAXHOST] = "", serv[NI_MAXSERV] = "";
        int rc = getnameinfo((struct sockaddr *)&ss, len, host, cases[i].hostlen, serv,
                             sizeof serv, cases[i].flags);
        printf("ni.%s=%s %s %s\n", cases[i].label, gainame(rc), rc == 0 ? host : "-",
               rc == 0 ? serv : "-");
    }
    fflush(stdout);
    return 0;
}

static int cmd_hostname(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    char buf[256];
    CHECK(gethostname(buf, sizeof buf) == 0, "gethostname");
    say("hostname", "%s", buf);
    memset(buf, '#', sizeof buf);
    errno = 0;
    int rc = gethostname(buf, 3);
    say("short", "rc=%d errno=%s bytes=%.3s", rc, errname(errno), buf);
    struct utsname u;
    CHECK(uname(&u) == 0, "uname");
    say("nodename", "%s", u.nodename);
    say("sysname", "%s", u.sysname);
    return 0;
}

/* threads N FAMILY ADDR PORT: N threads connect at once, each checks its own connection. */
struct thread_arg {
    int family;
    const char *addr;
    int port;
    int ok;
};

static void *connect_thread(void *p)
{
    struct thread_arg *t = p;
    for (int round = 0; round < 3; round++) {
        int fd = socket(t->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        socklen_t len;
        struct sockaddr_storage dst = make_addr(t->family, t->addr, t->port, &len);
        CHECK(connect(fd, (struct sockaddr *)&dst, len) == 0, "threaded connect");
        char expect[80];
        snprintf(expect, sizeof expect, "%s%s:%d%s", t->family == AF_INET6 ? "[::ffff:" : "",
                 t->addr, t->port, "");
        if (t->family == AF_INET6)
            snprintf(expect, sizeof expect, "[::ffff:%s]:%d", t->addr, t->port);
        CHECK(strcmp(peername(fd), expect) == 0, "peer %s != %s", peername(fd), expect);
        char msg[64];
        snprintf(msg, sizeof msg, "thread %p round %d", p, round);
        echo_roundtrip(fd, msg);
        CHECK(close(fd) == 0, "close");
        t->ok++;
    }
    return NULL;
}

static int cmd_threads(int argc, char **argv)
{
    CHECK(argc >= 4, "usage: threads n family addr port");
    int n = atoi(argv[0]);
    pthread_t tids[256];
    struct thread_arg args[256];
    CHECK(n > 0 && n <= 256, "n");
    for (int i = 0; i < n; i++) {
        args[i] = (struct thread_arg){strcmp(argv[1], "inet6") == 0 ? AF_INET6 : AF_INET,
                                      argv[2], atoi(argv[3]), 0};
        CHECK(pthread_create(&tids[i], NULL, connect_thread, &args[i]) == 0, "pthread_create");
    }
    int total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        total += args[i].ok;
    }
    say("connected", "%d", total);
    return 0;
}

/* fork N ADDR PORT: threads churn through the table lock while the main thread forks; every
 * child must find the lock usable (alarm turns a deadlock into a failure). */
static int stop_churn; /* atomic: read by the churn threads, set by main (TSan holds us to it) */

static void *churn(void *p)
{
    (void)p;
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int d = dup(fd);
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &len);
        close(d);
        close(fd);
    }
    return NULL;
}

static int cmd_fork(int argc, char **argv)
{
    CHECK(argc >= 3, "usage: fork n addr port");
    int n = atoi(argv[0]);
    pthread_t tids[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&tids[i], NULL, churn, NULL) == 0, "pthread_create");
    int fd = socket(AF_INET, SOCK_STREAM, 0); /* inherited, tracked, connected in a child */
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            alarm(3); /* a deadlocked child dies instead of hanging the test */
            /* Uses the table (lock) and the agent from the child. */
            int s = socket(AF_INET, SOCK_STREAM, 0);
            int d = dup(s);
            close(s);
            close(d);
            if (i % 8 == 0) {
                socklen_t len;
                struct sockaddr_storage dst = make_addr(AF_INET, argv[1], atoi(argv[2]), &len);
                if (connect(fd, (struct sockaddr *)&dst, len) != 0)
                    _exit(3);
                echo_roundtrip(fd, "child");
            }
            _exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else {
            fprintf(stderr, "child %d: status %#x\n", i, status);
            break; /* one broken child says enough; do not wait out the others */
        }
    }
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        pthread_join(tids[i], NULL);
    say("children_ok", "%d", ok);
    return 0;
}

int main(int argc, char **argv)
{
    CHECK(argc >= 2, "usage: probe scenario args...");
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"connect", cmd_connect}, {"listen", cmd_listen},     {"bind", cmd_bind},
        {"dup", cmd_dup},         {"dupconn", cmd_dupconn},   {"gai", cmd_gai},
        {"hostent", cmd_hostent}, {"nameinfo", cmd_nameinfo}, {"hostname", cmd_hostname},
        {"threads", cmd_threads}, {"fork", cmd_fork},       {"aconnect", cmd_aconnect},
        {"aburst", cmd_aburst},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (strcmp(argv[1], cmds[i].name) == 0)
            return cmds[i].fn(argc - 2, argv + 2);
    CHECK(0, "unknown scenario %s", argv[1]);
    return 2;
}

/* The socket calls: socket, bind, listen, accept/accept4, connect, close/close_range,
 * dup/dup2/dup3/fcntl, getsockname/getpeername.
 *
 * Only AF_INET/AF_INET6 SOCK_STREAM sockets are tracked; the first thing every wrapper does is
 * hand anything else to libc. Overlay addresses never reach the kernel: a bind to BOXER_ADDR
 * is really a bind to 127.0.0.1, a connect to the overlay becomes a socket the agent hands us,
 * put in place of the app's fd (same number, same flags). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "boxer_internal.h"

/* ---- addresses --------------------------------------------------------------------------- */

void boxer_sockaddr_out(int family, const struct sockaddr_in *v4, struct sockaddr *addr,
                        socklen_t *len)
{
    union {
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u;
    socklen_t full;
    memset(&u, 0, sizeof u);
    if (family == AF_INET6) {
        u.in6.sin6_family = AF_INET6;
        u.in6.sin6_port = v4->sin_port;
        u.in6.sin6_addr.s6_addr[10] = 0xff;
        u.in6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&u.in6.sin6_addr.s6_addr[12], &v4->sin_addr, 4);
        full = sizeof u.in6;
    } else {
        u.in = *v4;
        u.in.sin_family = AF_INET;
        full = sizeof u.in;
    }
    if (addr != NULL && len != NULL)
        memcpy(addr, &u, *len < full ? *len : full);
    if (len != NULL)
        *len = full;
}

bool boxer_sockaddr_v4(const struct sockaddr *addr, socklen_t len, struct sockaddr_in *out)
{
    if (addr == NULL)
        return false;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        out->sin_addr = in->sin_addr;
        out->sin_port = in->sin_port;
        return true;
    }
    if (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return false;
        memcpy(&out->sin_addr, &in6->sin6_addr.s6_addr[12], 4);
        out->sin_port = in6->sin6_port;
        return true;
    }
    return false;
}

static bool is_wildcard(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return false;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

static void msg_set_addr(struct boxer_msg *m, struct in_addr a) { memcpy(m->addr, &a, 4); }

static struct in_addr msg_addr(const struct boxer_msg *m)
{
    struct in_addr a;
    memcpy(&a, m->addr, 4);
    return a;
}

/* Makes fd refer to the socket received from the agent: same number, close-on-exec as asked,
 * O_NONBLOCK exactly as asked (the agent's copy shares the file description and may well be
 * non-blocking: asyncio). Closes `received`. */
static int install(int received, int fd, bool cloexec, bool nonblock)
{
    if (libc_dup3(received, fd, cloexec ? O_CLOEXEC : 0) < 0) {
        int saved = errno;
        libc_close(received);
        errno = saved;
        return -1;
    }
    libc_close(received);
    int fl = libc_fcntl(fd, F_GETFL, NULL);
    if (fl >= 0) {
        long want = nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
        if (want != fl)
            libc_fcntl(fd, F_SETFL, (void *)want);
    }
    return 0;
}

/* The socket options an app commonly sets before connect/listen: carried over to the socket
 * that replaces its own, so TCP_NODELAY and keepalive survive the swap (ip2unix does the same). */
static void copy_sockopts(int from, int to)
{
    static const struct {
        int level, name;
    } opts[] = {
        {IPPROTO_TCP, TCP_NODELAY},   {SOL_SOCKET, SO_KEEPALIVE},    {IPPROTO_TCP, TCP_KEEPIDLE},
        {IPPROTO_TCP, TCP_KEEPINTVL}, {IPPROTO_TCP, TCP_KEEPCNT},    {IPPROTO_TCP, TCP_USER_TIMEOUT},
        {SOL_SOCKET, SO_PRIORITY},    {SOL_SOCKET, SO_OOBINLINE},
    };
    int saved = errno;
    /* The keepalive timings have non-zero kernel defaults (7200/75/9): copying them from a socket
     * whose app never enabled keepalive would undo the agent's NAT-friendly keepalives. */
    int app_keepalive = 0;
    socklen_t klen = sizeof app_keepalive;
    libc_getsockopt(from, SOL_SOCKET, SO_KEEPALIVE, &app_keepalive, &klen);
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        int val;
        socklen_t len = sizeof val;
        int timing = opts[i].level == IPPROTO_TCP && (opts[i].name == TCP_KEEPIDLE ||
                     opts[i].name == TCP_KEEPINTVL || opts[i].name == TCP_KEEPCNT);
        if (timing && !app_keepalive)
            continue;
        if (libc_getsockopt(from, opts[i].level, opts[i].name, &val, &len) == 0 && val != 0)
            libc_setsockopt(to, opts[i].level, opts[i].name, &val, len);
    }
    struct timeval tv;
    socklen_t len = sizeof tv;
    if (libc_getsockopt(from, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec))
        libc_setsockopt(to, SOL_SOCKET, SO_RCVTIMEO, &tv, len);
    len = sizeof tv;
    if (libc_getsockopt(from, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec))
        libc_setsockopt(to, SOL_SOCKET, SO_SNDTIMEO, &tv, len);
    errno = saved;
}

static void send_unlisten(uint16_t port)
{
    if (port == 0)
        return;
    int saved = errno;
    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_UNLISTEN);
    req.port = port;
    if (boxer_agent_call(&req, &reply, NULL) == 0 && reply.status != 0)
        BOXER_LOG(WARN, "UNLISTEN %u refused by the agent: %s", port, strerror((int)reply.status));
    errno = saved;
}

/* ---- socket, bind, listen ------------------------------------------------------------------- */

/* The entry test of the wrappers that take an fd: true if fd (or newfd, -1 if none) has an entry
 * and we may touch our state. The lock-free look-up comes first, so calls on the app's other
 * descriptors cost neither a lock nor the getpid syscall of the CLONE_VM test. */
static bool ours(int fd, int newfd)
{
    return boxer_config()->enabled && (boxer_fd_tracked(fd) || (newfd >= 0 && boxer_fd_tracked(newfd))) &&
           !boxer_in_vm_child();
}

static int boxer_socket(int domain, int type, int protocol)
{
    int fd = libc_socket(domain, type, protocol);
    if (fd < 0 || !boxer_config()->enabled)
        return fd;
    if ((domain == AF_INET || domain == AF_INET6) &&
        (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_STREAM) {
        if (!boxer_in_vm_child())
            boxer_fd_track(fd, domain);
    } else if (ours(fd, -1)) {
        (void)boxer_fd_drop(fd); /* a stale entry must not describe this new fd */
    }
    return fd;
}

static int boxer_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct boxer_sock info;
    struct sockaddr_in v4;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &info) || addr == NULL ||
        addr->sa_family != info.family || !boxer_sockaddr_v4(addr, len, &v4) ||
        !boxer_in_overlay(v4.sin_addr))
        return libc_bind(fd, addr, len);

    const struct boxer_config *c = boxer_config();
    if (!c->have_addr || v4.sin_addr.s_addr != c->addr.s_addr) {
        BOXER_LOG(DEBUG, "fd %d: %s is another host's overlay address", fd,
                  inet_ntoa(v4.sin_addr));
        errno = EADDRNOTAVAIL;
        return -1;
    }
    /* Our own overlay address: the kernel knows it as loopback. */
    struct sockaddr_storage real;
    if (len > sizeof real)
        len = sizeof real;
    memcpy(&real, addr, len);
    if (info.family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&real;
        memset(&in6->sin6_addr, 0, sizeof in6->sin6_addr);
        in6->sin6_addr.s6_addr[10] = in6->sin6_addr.s6_addr[11] = 0xff;
        uint32_t lo = htonl(INADDR_LOOPBACK);
        memcpy(&in6->sin6_addr.s6_addr[12], &lo, 4);
    } else {
        ((struct sockaddr_in *)&real)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    int rc = libc_bind(fd, (struct sockaddr *)&real, len);
    if (rc == 0) {
        info.bound_overlay = true;
        boxer_fd_update(fd, &info);
    }
    return rc;
}

static int boxer_listen(int fd, int backlog)
{
    struct boxer_sock info;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &info))
        return libc_listen(fd, backlog);
    int rc = libc_listen(fd, backlog);
    if (rc < 0 || info.listening) /* a second listen() only changes the backlog */
        return rc;

    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (libc_getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0)
        return -1;
    if (!info.bound_overlay && !is_wildcard(&ss))
        return 0; /* a loopback-only (or other local address) listener: none of our business */

    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_LISTEN);
    req.port = port_of(&ss);
    req.flags = info.bound_overlay ? 1 : 0;
    if (boxer_agent_call(&req, &reply, NULL) < 0) {
        BOXER_LOG(ERROR, "fd %d: could not register port %u with the agent", fd, req.port);
        errno = ENETDOWN;
        return -1;
    }
    if (reply.status != 0) {
        BOXER_LOG(WARN, "fd %d: agent refused LISTEN %u: %s", fd, req.port,
                  strerror((int)reply.status));
        errno = (int)reply.status;
        return -1;
    }
    info.listening = true;
    info.listen_pid = (int)getpid();
    info.listen_port = req.port;
    boxer_fd_update(fd, &info);
    BOXER_LOG(INFO, "fd %d listens on overlay port %u", fd, req.port);
    return 0;
}

/* ---- accept ------------------------------------------------------------------------------ */

static bool is_wake_peer(const struct sockaddr_storage *ss, socklen_t len)
{
    struct sockaddr_in v4;
    return boxer_sockaddr_v4((const struct sockaddr *)ss, len, &v4) &&
           v4.sin_addr.s_addr == boxer_config()->wake.s_addr;
}

/* The agent woke the listener to deliver an overlay connection: swap the wake connection
 * (already accepted as nfd) for the real one. Returns 0, or -1 after closing nfd. */
static int take_overlay_connection(int lfd, const struct boxer_sock *listener, int nfd,
                                   uint16_t wake_port, int flags, struct boxer_sock *info)
{
    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_ACCEPT);
    req.port = listener->listen_port;
    req.token = wake_port;
    int received = -1;
    int rc = boxer_agent_call(&req, &reply, &received);
    if (rc == 0 && (reply.status != 0 || received < 0)) {
        BOXER_LOG(WARN, "listener fd %d: agent has no connection for wake port %u: %s", lfd,
                  wake_port, reply.status ? strerror((int)reply.status) : "no fd attached");
        if (received >= 0)
            libc_close(received);
        rc = -1;
    }
    if (rc == 0) {
        copy_sockopts(lfd, received);
        rc = install(received, nfd, flags & SOCK_CLOEXEC, flags & SOCK_NONBLOCK);
    }
    if (rc < 0) {
        libc_close(nfd);
        (void)boxer_fd_drop(nfd);
        errno = ECONNABORTED;
        return -1;
    }
    const struct boxer_config *c = boxer_config();
    info->connected = true;
    info->local.sin_family = AF_INET;
    info->local.sin_addr = c->addr;
    info->local.sin_port = htons(listener->listen_port);
    info->peer.sin_family = AF_INET;
    info->peer.sin_addr = msg_addr(&reply);
    info->peer.sin_port = htons(reply.port);
    boxer_fd_update(nfd, info);
    BOXER_LOG(DEBUG, "fd %d: overlay connection from %s:%u", nfd, inet_ntoa(info->peer.sin_addr),
              reply.port);
    return 0;
}

static int boxer_accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags)
{
    struct boxer_sock listener;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &listener))
        return libc_accept4(fd, addr, addrlen, flags);

    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    int nfd = libc_accept4(fd, (struct sockaddr *)&ss, &sslen, flags);
    if (nfd < 0)
        return nfd;
    boxer_fd_track(nfd, listener.family);
    struct boxer_sock info;
    memset(&info, 0, sizeof info);
    info.family = listener.family;

    if (listener.listening && is_wake_peer(&ss, sslen)) {
        if (take_overlay_connection(fd, &listener, nfd, port_of(&ss), flags, &info) < 0)
            return -1;
        boxer_sockaddr_out(listener.family, &info.peer, addr, addrlen);
        return nfd;
    }
    /* A genuine local connection: untouched. */
    if (addr != NULL && addrlen != NULL) {
        memcpy(addr, &ss, *addrlen < sslen ? *addrlen : sslen);
        *addrlen = sslen;
    }
    return nfd;
}

/* ---- connect ------------------------------------------------------------------------------ */

/* Asynchronous connect (O_NONBLOCK sockets).
 *
 * connect() sends CONNECT to the agent and returns -1/EINPROGRESS at once; the app then waits
 * for writability in its own event loop (poll, select, epoll) and reads SO_ERROR. Until the
 * agent answers, the app's own socket is the placeholder: bound to loopback and *listening*
 * (backlog 1, nothing connects to it), which is the one TCP state that reports neither POLLOUT
 * nor POLLHUP, and on which the app's setsockopt calls still work (they are copied over).
 *
 * One worker thread per process waits for all outstanding agent replies (poll over their Unix
 * connections; never one thread per connect: Lambda allows 1024 threads). On success it puts
 * the agent's socket in place of the app's fd (boxer_fd_finish_connect: dup3 under the table
 * lock, epoll registrations moved over, then the placeholder shut down so poll()/select()
 * sleepers wake and re-read the fd); the new socket is connected, hence writable, from the
 * moment it has the fd's number, so the app can never write into the placeholder. On failure
 * the placeholder is shut down (POLLOUT|POLLHUP) and SO_ERROR reports the agent's errno.
 *
 * epoll_ctl is interposed for this only (a control call): epoll registers open files, not
 * numbers, so registrations of a socket that may still be swapped are recorded and replayed,
 * as ip2unix does. nginx registers an upstream socket *before* connect, hence every tracked
 * unconnected socket is recorded, not only pending ones.
 *
 * Locks: worker.mutex guards the job list only; it is never held with the table mutex. */

struct connect_job {
    int agent;    /* the agent connection the reply comes on */
    int fd;       /* the app's fd */
    uint32_t id;  /* the fd's connect_id: the app may close fd (and reuse the number) meanwhile */
    struct boxer_msg req;
    struct connect_job *next;
};

static struct {
    pthread_mutex_t mutex;
    pid_t pid;   /* the process the worker runs in (0: none); a fork child starts its own */
    int wake;    /* eventfd: a job was added */
    struct connect_job *jobs;
    int outstanding; /* jobs in the list */
} worker = {.mutex = PTHREAD_ERRORCHECK_MUTEX_INITIALIZER_NP};

static pthread_once_t worker_once = PTHREAD_ONCE_INIT;
static uint32_t next_connect_id;

static void worker_lock(void) { boxer_mutex_lock(&worker.mutex, "lock(connect worker)"); }
static void worker_unlock(void) { boxer_mutex_unlock(&worker.mutex, "unlock(connect worker)"); }
static void worker_prepare(void) { worker_lock(); }
static void worker_parent(void) { worker_unlock(); }
static void worker_child(void)
{
    boxer_mutex_init(&worker.mutex);
    /* The worker thread did not survive fork. The parent completes its connects (its dup3 is
     * its own; the child's copies of those fds stay placeholders and see the HUP). */
    for (struct connect_job *j = worker.jobs, *next; j != NULL; j = next) {
        next = j->next;
        libc_close(j->agent);
        free(j);
    }
    worker.jobs = NULL;
    worker.outstanding = 0;
    if (worker.pid != 0)
        libc_close(worker.wake);
    worker.pid = 0;
}
static void worker_atfork(void) { pthread_atfork(worker_prepare, worker_parent, worker_child); }

static void complete(struct connect_job *job)
{
    struct boxer_msg reply;
    int received = -1;
    const char *what = inet_ntoa(*(struct in_addr *)job->req.addr);
    int err = 0;
    if (boxer_agent_finish(job->agent, &job->req, &reply, &received) < 0)
        err = ENETUNREACH;
    else if (reply.status != 0)
        err = (int)reply.status;
    else if (received < 0)
        err = ENETUNREACH;
    if (err != 0) {
        if (received >= 0)
            libc_close(received);
        BOXER_LOG(INFO, "fd %d: connect to %s:%u: %s", job->fd, what, job->req.port,
                  strerror(err));
        boxer_fd_fail_connect(job->fd, job->id, err);
        return;
    }
    copy_sockopts(job->fd, received); /* what the app set on the placeholder meanwhile */
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(reply.port)};
    local.sin_addr = msg_addr(&reply);
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(job->req.port)};
    peer.sin_addr = msg_addr(&job->req);
    if (boxer_fd_finish_connect(job->fd, job->id, received, &local, &peer) < 0)
        BOXER_LOG(INFO, "fd %d: connect to %s:%u completed but not installed: %s", job->fd,
                  what, job->req.port, strerror(errno));
    else
        BOXER_LOG(DEBUG, "fd %d: connected to %s:%u (async)", job->fd, what, job->req.port);
}

/* worker_main keeps its job pointers right after its pollfd array, in one allocation. */
_Static_assert(sizeof(struct pollfd) % _Alignof(struct connect_job *) == 0,
               "the job index after the pollfd array would be misaligned");

static void *worker_main(void *arg)
{
    (void)arg;
    struct pollfd *pfds = NULL;
    struct connect_job **index = NULL;
    size_t cap = 0;
    for (;;) {
        worker_lock();
        size_t n = 1;
        for (struct connect_job *j = worker.jobs; j != NULL; j = j->next)
            n++;
        if (n > cap) {
            /* One block: the pollfd array, then the job of each entry (index[k] for pfds[k]). */
            size_t want = n * 2;
            void *grown = realloc(pfds, want * (sizeof *pfds + sizeof *index));
            if (grown != NULL) {
                pfds = grown;
                index = (struct connect_job **)(pfds + want);
                cap = want;
            }
        }
        if (cap == 0) { /* no memory yet even for the wake fd: the jobs wait, we try again */
            pthread_mutex_unlock(&worker.mutex);
            usleep(10000);
            continue;
        }
        size_t k = 0;
        pfds[k++] = (struct pollfd){.fd = worker.wake, .events = POLLIN};
        for (struct connect_job *j = worker.jobs; j != NULL && k < cap; j = j->next) {
            index[k] = j;
            pfds[k++] = (struct pollfd){.fd = j->agent, .events = POLLIN};
        }
        worker_unlock();
        if (poll(pfds, k, -1) < 0)
            continue; /* EINTR (signals are blocked here, but be safe) */
        if (pfds[0].revents & POLLIN) {
            uint64_t v;
            (void)!read(worker.wake, &v, sizeof v);
        }
        for (size_t i = 1; i < k; i++) {
            if (pfds[i].revents == 0)
                continue;
            struct connect_job *job = index[i];
            worker_lock();
            for (struct connect_job **pp = &worker.jobs; *pp != NULL; pp = &(*pp)->next) {
                if (*pp == job) {
                    *pp = job->next;
                    worker.outstanding--;
                    break;
                }
            }
            worker_unlock();
            complete(job); /* the reply is there: one sendmsg of 300 bytes */
            free(job);
        }
    }
    return NULL;
}

/* At most this many asynchronous connects in flight per process: each holds an agent
 * connection (a descriptor) until the punch is done, and with Lambda's 1024 descriptors a
 * burst of hundreds of connects must not exhaust them. Beyond it, connect() waits (as POSIX
 * allows a non-blocking connect to do); the app's thread stalls, its descriptors do not run out. */
#define ASYNC_CONNECT_MAX 64

/* Hands the job to this process's worker (started on first use). false: no worker could be
 * started, or too many connects are in flight; the caller completes the connect itself. */
static bool worker_submit(struct connect_job *job)
{
    pthread_once(&worker_once, worker_atfork);
    worker_lock();
    if (worker.outstanding >= ASYNC_CONNECT_MAX && worker.pid == getpid()) {
        worker_unlock();
        errno = EAGAIN;
        return false;
    }
    if (worker.pid != getpid()) {
        worker.wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (worker.wake < 0) {
            worker_unlock();
            return false;
        }
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        /* The app's signal handlers must never run on our thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t t;
        int rc = pthread_create(&t, &attr, worker_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            BOXER_LOG(WARN, "cannot start the connect worker: %s", strerror(rc));
            libc_close(worker.wake);
            worker_unlock();
            return false;
        }
        worker.pid = getpid();
    }
    job->next = worker.jobs;
    worker.jobs = job;
    worker.outstanding++;
    uint64_t one = 1;
    (void)!write(worker.wake, &one, sizeof one);
    worker_unlock();
    return true;
}

/* Turns the app's (unconnected) socket into the never-ready placeholder: bound to loopback if
 * it is not bound yet, listening with backlog 1. */
static int make_placeholder(int fd, int family)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (libc_getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (port_of(&ss) == 0) {
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        int rc = family == AF_INET6 ? libc_bind(fd, (struct sockaddr *)&in6, sizeof in6)
                                    : libc_bind(fd, (struct sockaddr *)&in, sizeof in);
        if (rc < 0 && family == AF_INET6) { /* no ::1 here: the v4-mapped loopback */
            in6.sin6_addr = (struct in6_addr){.s6_addr = {[10] = 0xff, [11] = 0xff, [12] = 127,
                                                          [15] = 1}};
            rc = libc_bind(fd, (struct sockaddr *)&in6, sizeof in6);
        }
        if (rc < 0)
            return -1;
    }
    return libc_listen(fd, 1);
}

/* Reads the agent's reply to a CONNECT and installs the socket: the synchronous path. */
static int connect_wait(int fd, int s, const struct boxer_msg *req, const struct sockaddr_in *dst)
{
    struct boxer_msg reply;
    int received = -1;
    if (boxer_agent_finish(s, req, &reply, &received) < 0) {
        BOXER_LOG(ERROR, "fd %d: connect to %s:%u: the agent is unreachable", fd,
                  inet_ntoa(dst->sin_addr), req->port);
        errno = ENETUNREACH;
        return -1;
    }
    if (reply.status != 0) {
        if (received >= 0)
            libc_close(received);
        BOXER_LOG(INFO, "fd %d: connect to %s:%u: %s", fd, inet_ntoa(dst->sin_addr), req->port,
                  strerror((int)reply.status));
        errno = (int)reply.status;
        return -1;
    }
    if (received < 0) {
        BOXER_LOG(ERROR, "fd %d: agent accepted CONNECT but sent no fd", fd);
        errno = ENETUNREACH;
        return -1;
    }
    copy_sockopts(fd, received);
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(reply.port)};
    local.sin_addr = msg_addr(&reply);
    if (boxer_fd_finish_connect(fd, 0, received, &local, dst) < 0) {
        BOXER_LOG(ERROR, "fd %d: cannot install the overlay connection: %s", fd, strerror(errno));
        errno = ENETUNREACH;
        return -1;
    }
    BOXER_LOG(DEBUG, "fd %d: connected to %s:%u", fd, inet_ntoa(dst->sin_addr), req->port);
    return 0;
}

static int boxer_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct boxer_sock info;
    struct sockaddr_in dst;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &info))
        return libc_connect(fd, addr, len);
    /* The outcome of an asynchronous connect, as the kernel reports it to a second connect():
     * EALREADY while in progress, then 0 (or the error) once, then EISCONN. */
    if (info.connect_id != 0) {
        errno = EALREADY;
        return -1;
    }
    if (info.connect_unreported) {
        int err = info.connect_error;
        info.connect_unreported = false;
        info.connect_error = 0;
        boxer_fd_update(fd, &info);
        if (err != 0) {
            errno = err;
            return -1;
        }
        if (info.connected)
            return 0;
    }
    if (addr == NULL || addr->sa_family != info.family || !boxer_sockaddr_v4(addr, len, &dst) ||
        !boxer_in_overlay(dst.sin_addr) || info.listening)
        return libc_connect(fd, addr, len);
    if (info.connected) {
        errno = EISCONN;
        return -1;
    }
    int flflags = libc_fcntl(fd, F_GETFL, NULL);
    if (flflags < 0)
        return -1; /* EBADF: as the kernel would say */

    struct boxer_msg req;
    boxer_msg_init(&req, BOXER_OP_CONNECT);
    msg_set_addr(&req, dst.sin_addr);
    req.port = ntohs(dst.sin_port);
    int s = boxer_agent_send(&req);
    if (s < 0) {
        BOXER_LOG(ERROR, "fd %d: connect to %s:%u: the agent is unreachable", fd,
                  inet_ntoa(dst.sin_addr), req.port);
        errno = ENETUNREACH;
        return -1;
    }
    if (!(flflags & O_NONBLOCK))
        return connect_wait(fd, s, &req, &dst);

    struct connect_job *job = calloc(1, sizeof *job);
    if (job == NULL || make_placeholder(fd, info.family) < 0) {
        /* No placeholder (e.g. the app bound a port that cannot listen): block instead, which
         * POSIX allows for a non-blocking connect that completes at once. */
        BOXER_LOG(INFO, "fd %d: asynchronous connect not possible (%s); waiting", fd,
                  strerror(errno));
        free(job);
        return connect_wait(fd, s, &req, &dst);
    }
    job->agent = s;
    job->fd = fd;
    job->req = req;
    do
        job->id = __atomic_add_fetch(&next_connect_id, 1, __ATOMIC_RELAXED);
    while (job->id == 0);
    info.connect_id = job->id;
    info.connect_error = 0;
    info.connect_unreported = false;
    info.peer = dst;
    boxer_fd_update(fd, &info);
    if (!worker_submit(job)) {
        info.connect_id = 0;
        boxer_fd_update(fd, &info);
        free(job);
        int rc = connect_wait(fd, s, &req, &dst);
        if (rc < 0) { /* the placeholder must not stay listening */
            int saved = errno;
            shutdown(fd, SHUT_RDWR);
            errno = saved;
        }
        return rc;
    }
    errno = EINPROGRESS;
    return -1;
}

/* SO_ERROR after an asynchronous connect reports the agent's errno (ETIMEDOUT, EHOSTUNREACH...
 * cannot be produced on a local placeholder); everything else is the kernel's. */
static int boxer_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    int err;
    if (level != SOL_SOCKET || name != SO_ERROR || !ours(fd, -1) || val == NULL ||
        len == NULL || (int)*len < 0 || !boxer_fd_take_error(fd, &err))
        return libc_getsockopt(fd, level, name, val, len);
    memcpy(val, &err, *len < sizeof err ? *len : sizeof err);
    if (*len > sizeof err)
        *len = sizeof err;
    return 0;
}

static int boxer_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    int rc;
    if (ours(fd, -1) && boxer_fd_epoll_ctl(epfd, op, fd, ev, &rc))
        return rc;
    return libc_epoll_ctl(epfd, op, fd, ev);
}

/* ---- names of sockets ------------------------------------------------------------------- */

static int boxer_getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    struct boxer_sock info;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &info))
        return libc_getsockname(fd, addr, len);
    if (info.connect_id != 0 && boxer_config()->have_addr && len != NULL) {
        /* In progress: our address, port not known yet (not the placeholder's loopback). */
        struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_addr = boxer_config()->addr};
        boxer_sockaddr_out(info.family, &v4, addr, len);
        return 0;
    }
    if (info.connected) {
        if (len == NULL) {
            errno = EFAULT;
            return -1;
        }
        boxer_sockaddr_out(info.family, &info.local, addr, len);
        return 0;
    }
    if (info.bound_overlay && boxer_config()->have_addr) {
        /* Really bound to 127.0.0.1: report our overlay address with the real port. */
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof ss;
        if (libc_getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0)
            return -1;
        if (len == NULL) {
            errno = EFAULT;
            return -1;
        }
        struct sockaddr_in v4 = {.sin_family = AF_INET,
                                 .sin_addr = boxer_config()->addr,
                                 .sin_port = htons(port_of(&ss))};
        boxer_sockaddr_out(info.family, &v4, addr, len);
        return 0;
    }
    return libc_getsockname(fd, addr, len);
}

static int boxer_getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    struct boxer_sock info;
    if (!ours(fd, -1) || !boxer_fd_get(fd, &info) || !info.connected)
        return libc_getpeername(fd, addr, len);
    if (len == NULL) {
        errno = EFAULT;
        return -1;
    }
    boxer_sockaddr_out(info.family, &info.peer, addr, len);
    return 0;
}

/* ---- close and dup --------------------------------------------------------------------- */

static int boxer_close(int fd)
{
    if (!ours(fd, -1))
        return libc_close(fd);
    /* Detach first, then close: once the number is free another thread may get it from
     * socket() and track it, and we must not drop that new entry. */
    uint16_t port = boxer_fd_drop(fd);
    int rc = libc_close(fd);
    send_unlisten(port); /* errno preserved */
    return rc;
}

static int boxer_close_range(unsigned int first, unsigned int last, int flags)
{
    int rc = libc_close_range(first, last, flags);
    if (rc < 0 || !boxer_enabled() || (flags & CLOSE_RANGE_CLOEXEC))
        return rc;
    bool more;
    do {
        uint16_t port;
        more = boxer_fd_drop_range(&first, last, &port);
        send_unlisten(port);
    } while (more);
    return rc;
}

static int boxer_dup(int oldfd)
{
    int newfd = libc_dup(oldfd);
    if (newfd >= 0 && ours(oldfd, newfd))
        send_unlisten(boxer_fd_dup(oldfd, newfd));
    return newfd;
}

static int boxer_dup3(int oldfd, int newfd, int flags, bool is_dup2)
{
    int rc = is_dup2 ? libc_dup2(oldfd, newfd) : libc_dup3(oldfd, newfd, flags);
    if (rc >= 0 && oldfd != newfd && ours(oldfd, newfd))
        send_unlisten(boxer_fd_dup(oldfd, newfd)); /* newfd was closed if it was open */
    return rc;
}

static int boxer_fcntl(int fd, int cmd, void *arg)
{
    int rc = libc_fcntl(fd, cmd, arg);
    if (rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && ours(fd, rc))
        send_unlisten(boxer_fd_dup(fd, rc));
    return rc;
}

/* ---- exported symbols ------------------------------------------------------------------- */

BOXER_EXPORT int socket(int domain, int type, int protocol)
{
    return boxer_socket(domain, type, protocol);
}
BOXER_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    return boxer_bind(fd, addr, len);
}
BOXER_EXPORT int listen(int fd, int backlog) { return boxer_listen(fd, backlog); }
BOXER_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return boxer_accept4(fd, addr, len, 0);
}
BOXER_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    return boxer_accept4(fd, addr, len, flags);
}
BOXER_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    return boxer_connect(fd, addr, len);
}
BOXER_EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    return boxer_getsockopt(fd, level, name, val, len);
}
BOXER_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    return boxer_epoll_ctl(epfd, op, fd, ev);
}
BOXER_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    return boxer_getsockname(fd, addr, len);
}
BOXER_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    return boxer_getpeername(fd, addr, len);
}
BOXER_EXPORT int close(int fd) { return boxer_close(fd); }
BOXER_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    return boxer_close_range(first, last, flags);
}
BOXER_EXPORT int dup(int oldfd) { return boxer_dup(oldfd); }
BOXER_EXPORT int dup2(int oldfd, int newfd) { return boxer_dup3(oldfd, newfd, 0, true); }
BOXER_EXPORT int dup3(int oldfd, int newfd, int flags)
{
    return boxer_dup3(oldfd, newfd, flags, false);
}

/* fcntl is variadic; every command's argument is an int, a long or a pointer, all passed in
 * one register on the ABIs we support, so reading it as a pointer is lossless. fcntl64 is the
 * name callers built with _FILE_OFFSET_BITS=64 use. */
BOXER_EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return boxer_fcntl(fd, cmd, arg);
}
BOXER_EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return boxer_fcntl(fd, cmd, arg);
}

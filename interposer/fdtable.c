/* The fd table: a flat array indexed by fd number, each slot pointing to a refcounted
 * struct boxer_sock shared by all fds that refer to one socket (dup). Also the registry of
 * addrinfo lists we allocated.
 *
 * Locking: one error-checking mutex protects the table and the registry. It is the only lock
 * and it is never held across a blocking call (agent I/O, close, accept...): callers copy what
 * they need out (boxer_fd_get), work without it, and write back (boxer_fd_update).
 * Fork: the prepare handler takes the mutex so no other thread is inside it at fork time; the
 * parent releases it, the child re-creates it (its thread id changed, so an error-checking
 * mutex could not be unlocked there). The child inherits the table, as it inherits the fds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boxer_internal.h"

#define INITIAL_MAX 65536 /* cap on the first allocation; grows past it on demand */

static pthread_mutex_t mutex;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The table itself: published with one atomic pointer so that boxer_fd_tracked() can read it
 * without the lock (a vfork child may, and every call on an untracked fd does). A table that is
 * outgrown is never freed, since a lock-free reader may still look at it: growth past the first
 * allocation (RLIMIT_NOFILE, at most 65536 slots) is rare and doubles each time. */
struct table {
    size_t n;
    struct boxer_sock *slot[];
};
static struct table *table;

struct ai_entry {
    struct addrinfo *ai;
    struct ai_entry *next;
};
static struct ai_entry *ai_registry;

static void mutex_create(void) { boxer_mutex_init(&mutex); }

/* A failed lock or unlock (EDEADLK, EPERM) is a bug of ours, never the app's: carrying on would
 * corrupt the table, so say so and stop. */
static void lock(void) { boxer_mutex_lock(&mutex, "lock(fd table)"); }
static void unlock(void) { boxer_mutex_unlock(&mutex, "unlock(fd table)"); }

static void atfork_prepare(void) { lock(); }
static void atfork_parent(void) { unlock(); }
static void atfork_child(void) { mutex_create(); }

static void init(void)
{
    mutex_create();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    struct rlimit rl;
    size_t want = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        want = (size_t)rl.rlim_cur;
    if (want > INITIAL_MAX)
        want = INITIAL_MAX;
    struct table *t = calloc(1, sizeof *t + want * sizeof t->slot[0]);
    if (t != NULL)
        t->n = want;
    __atomic_store_n(&table, t, __ATOMIC_RELEASE);
}

static void lock_table(void)
{
    pthread_once(&init_once, init);
    lock();
}

/* Makes room for fd; false when out of memory (the fd then stays untracked). Locked. */
static bool ensure(int fd)
{
    if (fd < 0)
        return false;
    struct table *t = table;
    size_t have = t != NULL ? t->n : 0;
    if ((size_t)fd < have)
        return true;
    size_t n = have ? have : 1024;
    while (n <= (size_t)fd)
        n *= 2;
    struct table *grown = calloc(1, sizeof *grown + n * sizeof grown->slot[0]);
    if (grown == NULL) {
        BOXER_LOG(ERROR, "out of memory growing the fd table to %zu", n);
        return false;
    }
    grown->n = n;
    if (t != NULL)
        memcpy(grown->slot, t->slot, have * sizeof t->slot[0]);
    __atomic_store_n(&table, grown, __ATOMIC_RELEASE); /* the old one stays: see struct table */
    return true;
}

static struct boxer_sock *slot(int fd) /* locked */
{
    struct table *t = table;
    return t != NULL && fd >= 0 && (size_t)fd < t->n ? t->slot[fd] : NULL;
}

/* Sets slot fd (which ensure() made room for). Locked; atomic for lock-free readers. */
static void set_slot(int fd, struct boxer_sock *s) { __atomic_store_n(&table->slot[fd], s, __ATOMIC_RELEASE); }

bool boxer_fd_tracked(int fd)
{
    struct table *t = __atomic_load_n(&table, __ATOMIC_ACQUIRE);
    return t != NULL && fd >= 0 && (size_t)fd < t->n &&
           __atomic_load_n(&t->slot[fd], __ATOMIC_RELAXED) != NULL;
}

/* Empties slot fd; returns the port to UNLISTEN, or 0. Locked. */
static uint16_t release(int fd)
{
    struct boxer_sock *s = slot(fd);
    if (s == NULL)
        return 0;
    set_slot(fd, NULL);
    if (--s->refcount > 0)
        return 0;
    uint16_t port = 0;
    if (s->listening && s->listen_pid == getpid())
        port = s->listen_port;
    free(s);
    return port;
}

bool boxer_fd_get(int fd, struct boxer_sock *out)
{
    lock_table();
    struct boxer_sock *s = slot(fd);
    if (s != NULL)
        *out = *s;
    unlock();
    return s != NULL;
}

void boxer_fd_track(int fd, int family)
{
    int saved = errno;
    struct boxer_sock *s = calloc(1, sizeof *s);
    lock_table();
    /* A stale entry (fd closed behind our back, e.g. by a raw syscall) must not leak into the
     * new socket; no UNLISTEN for it, we cannot know it is really gone. */
    (void)release(fd);
    if (s != NULL && ensure(fd)) {
        s->refcount = 1;
        s->family = family;
        set_slot(fd, s);
        s = NULL;
    }
    unlock();
    free(s);
    errno = saved;
}

void boxer_fd_update(int fd, const struct boxer_sock *info)
{
    int saved = errno;
    struct boxer_sock *fresh = calloc(1, sizeof *fresh);
    lock_table();
    struct boxer_sock *s = slot(fd);
    if (s != NULL && s->refcount > 1 && fresh != NULL) {
        /* fd now differs from its dups (e.g. its socket was replaced by connect): split. */
        s->refcount--;
        s = fresh;
        s->refcount = 1;
        fresh = NULL;
        set_slot(fd, s);
    }
    if (s != NULL) {
        /* The epoll records belong to this module: the caller's copy may be stale. */
        struct boxer_sock keep = *s;
        *s = *info;
        s->refcount = keep.refcount;
        s->nepoll = keep.nepoll;
        memcpy(s->epoll, keep.epoll, sizeof s->epoll);
    }
    unlock();
    free(fresh);
    errno = saved;
}

uint16_t boxer_fd_drop(int fd)
{
    int saved = errno;
    lock_table();
    uint16_t port = release(fd);
    unlock();
    errno = saved;
    return port;
}

bool boxer_fd_drop_range(unsigned int *next, unsigned int last, uint16_t *port)
{
    int saved = errno;
    lock_table();
    *port = 0;
    size_t n = table != NULL ? table->n : 0;
    for (unsigned int fd = *next; fd <= last && fd < n && *port == 0; fd++) {
        *port = release((int)fd);
        *next = fd + 1; /* fd < n: cannot wrap */
    }
    unlock();
    errno = saved;
    return *port != 0;
}

uint16_t boxer_fd_dup(int oldfd, int newfd)
{
    int saved = errno;
    lock_table();
    uint16_t port = 0;
    struct boxer_sock *s = slot(oldfd);
    if (slot(newfd) != s || s == NULL)
        port = release(newfd);
    if (s != NULL && slot(newfd) == NULL && ensure(newfd)) {
        s->refcount++;
        set_slot(newfd, s);
    }
    unlock();
    errno = saved;
    return port;
}

/* ---- swapping sockets under the app's feet -------------------------------------------- */

static bool swappable(const struct boxer_sock *s) { return !s->connected && !s->listening; }

bool boxer_fd_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev, int *rc)
{
    int saved = errno;
    lock_table();
    struct boxer_sock *s = slot(fd);
    if (s == NULL || !swappable(s)) {
        unlock();
        errno = saved;
        return false;
    }
    /* Under the lock so that a concurrent swap (boxer_fd_finish_connect) sees every
     * registration that reached the kernel, and none that did not. epoll_ctl never blocks. */
    *rc = libc_epoll_ctl(epfd, op, fd, ev);
    saved = errno;
    if (*rc == 0) {
        int i = 0;
        while (i < s->nepoll && s->epoll[i].epfd != epfd)
            i++;
        if (op == EPOLL_CTL_DEL && i < s->nepoll) {
            s->epoll[i] = s->epoll[--s->nepoll];
        } else if ((op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) && ev != NULL) {
            if (i == s->nepoll && i < BOXER_EPOLL_MAX)
                s->nepoll++;
            if (i < s->nepoll)
                s->epoll[i] = (typeof(s->epoll[0])){.epfd = epfd, .ev = *ev};
            else
                BOXER_LOG(WARN, "fd %d is in more than %d epoll sets; epoll fd %d will not "
                          "follow its overlay connection", fd, BOXER_EPOLL_MAX, epfd);
        }
    }
    unlock();
    errno = saved;
    return true;
}

int boxer_fd_finish_connect(int fd, uint32_t connect_id, int received,
                            const struct sockaddr_in *local, const struct sockaddr_in *peer)
{
    int saved = errno;
    int rc = -1, err = 0, old = -1;
    struct boxer_sock *fresh = calloc(1, sizeof *fresh);
    lock_table();
    struct boxer_sock *s = slot(fd);
    if (s == NULL || (connect_id != 0 && s->connect_id != connect_id)) {
        err = ECANCELED; /* closed (and maybe reused) meanwhile: not our fd any more */
        goto out;
    }
    if (s->refcount > 1) {
        if (fresh == NULL) {
            err = ENOMEM;
            goto out;
        }
        /* dups of fd keep the old socket: fd alone gets the connection. */
        *fresh = *s;
        fresh->refcount = 1;
        s->refcount--;
        s = fresh;
        set_slot(fd, s);
        fresh = NULL;
    }
    int fdflags = libc_fcntl(fd, F_GETFD, NULL);
    int flflags = libc_fcntl(fd, F_GETFL, NULL);
    if (fdflags < 0 || flflags < 0) {
        err = errno;
        goto out;
    }
    /* A reference to the placeholder, to wake poll()/select() callers already sleeping on it
     * after the swap: they re-read the fd table when woken, and find the new socket. */
    if (connect_id != 0)
        old = libc_fcntl(fd, F_DUPFD_CLOEXEC, NULL);
    /* epoll keys registrations by open file: those on the placeholder would stay with it (and
     * report its HUP under the app's data), so they are moved, not left behind. */
    for (int i = 0; i < s->nepoll; i++)
        (void)libc_epoll_ctl(s->epoll[i].epfd, EPOLL_CTL_DEL, fd, NULL);
    if (libc_dup3(received, fd, (fdflags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
        err = errno;
        goto out;
    }
    long fl = libc_fcntl(fd, F_GETFL, NULL);
    long want = (flflags & O_NONBLOCK) ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    if (fl >= 0 && want != fl)
        libc_fcntl(fd, F_SETFL, (void *)want);
    for (int i = 0; i < s->nepoll; i++) {
        if (libc_epoll_ctl(s->epoll[i].epfd, EPOLL_CTL_ADD, fd, &s->epoll[i].ev) < 0)
            BOXER_LOG(WARN, "fd %d: cannot re-register with epoll fd %d: %s", fd, s->epoll[i].epfd,
                      strerror(errno));
    }
    s->nepoll = 0;
    s->connected = true;
    s->bound_overlay = false;
    s->connect_id = 0;
    s->connect_error = 0;
    s->connect_unreported = connect_id != 0;
    s->local = *local;
    s->peer = *peer;
    rc = 0;
out:
    unlock();
    free(fresh);
    if (old >= 0) {
        shutdown(old, SHUT_RDWR); /* the listening placeholder closes: its waiters wake */
        libc_close(old);
    }
    libc_close(received);
    errno = rc == 0 ? saved : err;
    return rc;
}

void boxer_fd_fail_connect(int fd, uint32_t connect_id, int err)
{
    int saved = errno;
    lock_table();
    struct boxer_sock *s = slot(fd);
    if (s != NULL && s->connect_id == connect_id) {
        s->connect_id = 0;
        s->connect_error = err;
        s->connect_unreported = true;
        /* The listening placeholder goes to CLOSE: POLLOUT|POLLHUP for poll, select and the
         * epoll registrations already on it, as for a refused connect. Never blocks. */
        shutdown(fd, SHUT_RDWR);
    }
    unlock();
    errno = saved;
}

bool boxer_fd_take_error(int fd, int *err)
{
    lock_table();
    struct boxer_sock *s = slot(fd);
    bool have = s != NULL && s->connect_error != 0;
    if (have) {
        *err = s->connect_error;
        s->connect_error = 0;
    }
    unlock();
    return have;
}

bool boxer_ai_register(struct addrinfo *ai)
{
    struct ai_entry *e = malloc(sizeof *e);
    if (e == NULL)
        return false;
    e->ai = ai;
    lock_table();
    e->next = ai_registry;
    ai_registry = e;
    unlock();
    return true;
}

bool boxer_ai_unregister(struct addrinfo *ai)
{
    lock_table();
    struct ai_entry **p = &ai_registry;
    while (*p != NULL && (*p)->ai != ai)
        p = &(*p)->next;
    struct ai_entry *e = *p;
    if (e != NULL)
        *p = e->next;
    unlock();
    free(e);
    return e != NULL;
}

/* ---- across exec: BOXER_FDS ------------------------------------------------------------------
 *
 * exec replaces our memory but not the descriptors: an overlay connection (sshd's re-exec per
 * connection, inetd-style servers) or listener (nginx's binary upgrade, socket activation)
 * inherited by the new image would be a plain kernel socket to it, with loopback and NAT
 * addresses. So the exec wrapper hands the new image our state in the environment:
 *
 *     BOXER_FDS=fd,inode,flags,family,listen_pid,listen_port,local_ip,local_port,peer_ip,peer_port;...
 *
 * (flags: 1 bound to the overlay address, 2 listening, 4 connected; addresses as host-order
 * integers), one entry per tracked descriptor that survives the exec (no FD_CLOEXEC). The new
 * image's constructor takes an entry only if that fd is still a socket with that inode: a
 * descriptor closed or replaced between here and the kernel's exec is not mistaken for it.
 * Why the environment rather than asking the agent: it needs no protocol change and no round
 * trip in every process start, the state is exactly the exec'ing process's own, and it is
 * bounded by what survives the exec (listeners and the one or two connections handed over).
 * A CLONE_VM child (vfork, CPython's subprocess) must not read the table: it passes nothing,
 * and its program sees its inherited sockets as plain kernel sockets. */

static bool describe(int fd, const struct boxer_sock *s, char *out, size_t cap, size_t *len)
{
    if (!s->listening && !s->connected && !s->bound_overlay)
        return true;
    int fdflags = libc_fcntl(fd, F_GETFD, NULL);
    struct stat st;
    if (fdflags < 0 || (fdflags & FD_CLOEXEC) || fstat(fd, &st) != 0)
        return true; /* gone at exec */
    int flags = (s->bound_overlay ? 1 : 0) | (s->listening ? 2 : 0) | (s->connected ? 4 : 0);
    int n = snprintf(out + *len, cap - *len, "%s%d,%lu,%d,%d,%d,%u,%u,%u,%u,%u", *len > 10 ? ";" : "", fd,
                     (unsigned long)st.st_ino, flags, s->family, s->listen_pid, s->listen_port,
                     ntohl(s->local.sin_addr.s_addr), ntohs(s->local.sin_port), ntohl(s->peer.sin_addr.s_addr),
                     ntohs(s->peer.sin_port));
    if (n < 0 || (size_t)n >= cap - *len) {
        out[*len] = '\0';
        return false;
    }
    *len += (size_t)n;
    return true;
}

const char *boxer_fds_env(char *buf, size_t cap)
{
    if (boxer_in_vm_child() || __atomic_load_n(&table, __ATOMIC_ACQUIRE) == NULL || cap < 16)
        return NULL;
    int saved = errno;
    size_t len = (size_t)snprintf(buf, cap, "BOXER_FDS=");
    lock_table();
    for (size_t fd = 0; fd < table->n; fd++) {
        struct boxer_sock *s = table->slot[fd];
        if (s != NULL && !describe((int)fd, s, buf, cap, &len)) {
            BOXER_LOG(WARN, "more overlay descriptors than fit in BOXER_FDS (%zu bytes): fd %zu and "
                      "later ones are plain sockets after exec", cap, fd);
            break;
        }
    }
    unlock();
    errno = saved;
    return len > 10 ? buf : NULL;
}

void boxer_fds_import(void)
{
    const char *list = getenv("BOXER_FDS");
    if (list == NULL)
        return;
    for (const char *p = list; *p != '\0';) {
        int fd, flags, family, listen_pid;
        unsigned long ino;
        unsigned listen_port, lip, lport, pip, pport;
        if (sscanf(p, "%d,%lu,%d,%d,%d,%u,%u,%u,%u,%u", &fd, &ino, &flags, &family, &listen_pid, &listen_port,
                   &lip, &lport, &pip, &pport) == 10) {
            struct stat st;
            if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == ino &&
                (family == AF_INET || family == AF_INET6)) {
                struct boxer_sock info = {.family = family,
                                          .bound_overlay = flags & 1,
                                          .listening = flags & 2,
                                          .connected = flags & 4,
                                          .listen_pid = listen_pid,
                                          .listen_port = (uint16_t)listen_port};
                info.local = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)lport),
                                                  .sin_addr.s_addr = htonl(lip)};
                info.peer = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)pport),
                                                 .sin_addr.s_addr = htonl(pip)};
                boxer_fd_track(fd, family);
                boxer_fd_update(fd, &info);
                BOXER_LOG(DEBUG, "fd %d: overlay %s inherited across exec", fd,
                          info.listening ? "listener" : info.connected ? "connection" : "socket");
            } else {
                BOXER_LOG(DEBUG, "fd %d: BOXER_FDS entry is stale (closed or replaced before exec)", fd);
            }
        } else {
            BOXER_LOG(WARN, "malformed BOXER_FDS entry ignored: %.60s", p);
        }
        const char *next = strchr(p, ';');
        if (next == NULL)
            break;
        p = next + 1;
    }
    unsetenv("BOXER_FDS"); /* ours, not the app's: its children get their own from our exec */
}

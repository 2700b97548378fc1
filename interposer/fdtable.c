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
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "boxer_internal.h"

#define INITIAL_MAX 65536 /* cap on the first allocation; grows past it on demand */

static pthread_mutex_t mutex;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static struct boxer_sock **slots;
static size_t nslots;

struct ai_entry {
    struct addrinfo *ai;
    struct ai_entry *next;
};
static struct ai_entry *ai_registry;

static void mutex_create(void)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&mutex, &attr);
    pthread_mutexattr_destroy(&attr);
}

static void lock(void)
{
    int rc = pthread_mutex_lock(&mutex);
    if (rc != 0) /* EDEADLK: a bug of ours, never the app's; say so loudly */
        BOXER_LOG(ERROR, "pthread_mutex_lock: %s", strerror(rc));
}

static void unlock(void)
{
    int rc = pthread_mutex_unlock(&mutex);
    if (rc != 0)
        BOXER_LOG(ERROR, "pthread_mutex_unlock: %s", strerror(rc));
}

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
    slots = calloc(want, sizeof *slots);
    nslots = slots != NULL ? want : 0;
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
    if ((size_t)fd < nslots)
        return true;
    size_t n = nslots ? nslots : 1024;
    while (n <= (size_t)fd)
        n *= 2;
    struct boxer_sock **grown = realloc(slots, n * sizeof *slots);
    if (grown == NULL) {
        BOXER_LOG(ERROR, "out of memory growing the fd table to %zu", n);
        return false;
    }
    memset(grown + nslots, 0, (n - nslots) * sizeof *slots);
    slots = grown;
    nslots = n;
    return true;
}

static struct boxer_sock *slot(int fd) /* locked */
{
    return fd >= 0 && (size_t)fd < nslots ? slots[fd] : NULL;
}

/* Empties slot fd; returns the port to UNLISTEN, or 0. Locked. */
static uint16_t release(int fd)
{
    struct boxer_sock *s = slot(fd);
    if (s == NULL)
        return 0;
    slots[fd] = NULL;
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
        slots[fd] = s;
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
        slots[fd] = s;
    }
    if (s != NULL) {
        int refcount = s->refcount;
        *s = *info;
        s->refcount = refcount;
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
    for (unsigned int fd = *next; fd <= last && fd < nslots && *port == 0; fd++) {
        *port = release((int)fd);
        *next = fd + 1; /* fd < nslots: cannot wrap */
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
        slots[newfd] = s;
    }
    unlock();
    errno = saved;
    return port;
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

/* The agent's native fast path: warm connects and accepts without waking Python.
 *
 * Why native: every interposer request used to cross the agent's asyncio loop. Measured in the
 * lab with connects 20 ms apart (an app making a new connection now and then), one trivial
 * request/reply through asyncio cost 0.6-0.8 ms, most of it Python running on cold caches after
 * the idle gap; the same exchange with a small C server costs 0.25 ms. A warm connect crossed
 * Python three times (the client's CONNECT, the server's GO byte, the server's ACCEPT), so this
 * thread now serves exactly those three steps, from tables the Python agent fills:
 *
 *   spares   client side: punched, authenticated connections per (overlay addr, port), ready for
 *            the app's next connect (boxer/agent/spares.py explains spares);
 *   held     server side: our ends of clients' spares, waiting for the GO byte;
 *   pending  server side: connections whose wake connection is on its way to the app's listener,
 *            keyed by (listening port, wake connection's source port), until the app's ACCEPT.
 *
 * It owns the interposer's Unix listener. A request it cannot answer from the tables (a cold
 * connect, names, LISTEN...) is forwarded, with the client's fd, to the Python agent over a
 * SOCK_SEQPACKET pair; Python answers that client itself. Anything the Python agent must know
 * (a spare used, a connection accepted) is written to an event pipe as a fixed-size record.
 *
 * Every connection it accepts is checked first (peercheck.c): only the agent's own process tree
 * may talk to it, whatever its uid; anyone else's connection is closed unread and reported.
 *
 * Python calls the bx_fp_* functions through ctypes (boxer/agent/fastpath.py) with the GIL
 * released; one mutex guards the tables. This thread never calls into Python. Descriptors handed
 * to bx_fp_* become ours: we close them when they are used, expire or fail. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "boxer_proto.h"
#include "peercheck.h"

#define EXPORT __attribute__((visibility("default")))

#define GO_BYTE 0x01
#define CLIENT_READ_TIMEOUT 5.0 /* s: a request is written right after connect; more is a stuck peer */

enum kind { K_LISTENER, K_CONTROL, K_FORWARD, K_CLIENT, K_HELD, K_WAKE };

/* Event records for the Python agent (boxer/agent/fastpath.py unpacks the same layout). */
enum event_kind {
    EV_SPARE_USED = 1,
    EV_ACCEPTED = 2,
    EV_HELD_DONE = 3,
    EV_WAKE_FAILED = 4,
    EV_REFUSED = 5, /* a connection from outside the agent's process tree (peercheck.c) */
};
struct event {
    uint16_t kind;
    uint16_t port;       /* SPARE_USED: target port; ACCEPTED, HELD_DONE, WAKE_FAILED: our port */
    uint16_t local_port; /* the handed connection's local port (for the connection tracker) */
    uint16_t pad;
    uint32_t addr; /* SPARE_USED: target overlay address (network order); REFUSED: the peer's pid */
    uint32_t uid;  /* REFUSED: the peer's uid */
} __attribute__((packed));
_Static_assert(sizeof(struct event) == 16, "event records are 16 bytes");

/* Every descriptor in the epoll set points at one of these (the kind comes first). */
struct entry {
    enum kind kind;
    int fd;
    double deadline; /* CLOCK_MONOTONIC seconds; 0: none */
    struct entry *next;
    /* K_CLIENT */
    size_t got;
    struct boxer_msg msg;
    /* K_HELD, K_WAKE */
    int sock; /* K_WAKE: the real connection */
    uint16_t port;
    uint16_t wake_port;
    uint32_t peer_addr; /* network order */
    uint16_t peer_port;
    bool connecting;
    bool dead; /* dropped: freed at the end of the thread's loop turn (a fetched event may name it) */
};

struct spare {
    uint32_t addr; /* network order */
    uint16_t port;
    uint16_t local_port;
    int fd;
    double expires;
    struct spare *next;
};

#define MAX_PORTS 65536

static struct {
    pthread_mutex_t mutex;
    pthread_t thread;
    bool running;
    int epoll, control, listener, forward, events;
    uint32_t own_addr; /* network order */
    uint32_t wake_addr; /* network order: the source address of wake connections */
    pid_t agent_pid;    /* the root of the process tree allowed to connect (peercheck.c) */
    struct spare *spares;
    struct entry *entries;   /* clients, held spares, pending accepts */
    struct entry *graveyard; /* dropped entries, freed by the thread between epoll_waits */
    struct forward *backlog; /* requests for Python that did not fit in the pair's buffer yet */
    bool forward_blocked;
    uint16_t listening[MAX_PORTS];
    double accept_pickup; /* s an accepted connection waits for the app's ACCEPT */
    struct entry listener_entry, control_entry, forward_entry;
} fp = {.mutex = PTHREAD_MUTEX_INITIALIZER, .epoll = -1, .control = -1, .accept_pickup = 10.0};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void emit_full(uint16_t kind, uint16_t port, uint16_t local_port, uint32_t addr,
                      uint32_t uid)
{
    struct event ev = {.kind = kind, .port = port, .local_port = local_port, .addr = addr,
                       .uid = uid};
    /* The pipe is non-blocking: if Python fell 4096 events behind, its counters lose one. */
    (void)!write(fp.events, &ev, sizeof ev);
}

static void emit(uint16_t kind, uint16_t port, uint16_t local_port, uint32_t addr)
{
    emit_full(kind, port, local_port, addr, 0);
}

static uint16_t local_port_of(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        return 0;
    return ntohs(sin.sin_port);
}

/* ---- entries ---------------------------------------------------------------------------- */

static struct entry *add_entry(enum kind kind, int fd, uint32_t events, double deadline)
{
    struct entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->kind = kind;
    e->fd = fd;
    e->sock = -1;
    e->deadline = deadline;
    struct epoll_event ev = {.events = events, .data.ptr = e};
    if (events != 0 && epoll_ctl(fp.epoll, EPOLL_CTL_ADD, fd, &ev) < 0) {
        free(e);
        return NULL;
    }
    e->next = fp.entries;
    fp.entries = e;
    return e;
}

/* Unlinks e and closes its descriptors (closing also removes them from epoll). The memory
 * goes to the graveyard: an event fetched by epoll_wait before this drop may still name it. */
static void drop_entry(struct entry *e)
{
    for (struct entry **pp = &fp.entries; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    if (e->fd >= 0)
        close(e->fd);
    if (e->sock >= 0)
        close(e->sock);
    e->fd = e->sock = -1;
    e->dead = true;
    e->next = fp.graveyard;
    fp.graveyard = e;
}

static void bury_the_dead(void)
{
    while (fp.graveyard != NULL) {
        struct entry *e = fp.graveyard;
        fp.graveyard = e->next;
        free(e);
    }
}

/* Tells the thread to look at its tables again (a new deadline, or stop). */
static void poke(void)
{
    uint64_t one = 1;
    if (fp.control >= 0)
        (void)!write(fp.control, &one, sizeof one);
}

/* ---- replies ---------------------------------------------------------------------------- */

static void reply(int client, struct boxer_msg *msg, uint32_t status, int pass_fd)
{
    msg->status = status;
    msg->pid = 0;
    struct iovec iov = {.iov_base = msg, .iov_len = sizeof *msg};
    union {
        struct cmsghdr hdr;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pass_fd >= 0) {
        memset(&control, 0, sizeof control);
        mh.msg_control = control.buf;
        mh.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    /* 300 bytes into a fresh Unix socket's empty buffer: never partial. */
    (void)!sendmsg(client, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* A request waiting for room in the pair to Python (a burst of cold connects can outrun it). */
struct forward {
    int client;
    struct boxer_msg msg;
    struct forward *next;
};

static bool send_forward(int client, const struct boxer_msg *msg)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = sizeof *msg};
    union {
        struct cmsghdr hdr;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof control.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &client, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(fp.forward, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return false;
    close(client); /* sent (Python holds its own copy now), or Python is gone */
    return true;
}

static void watch_forward(bool writable_wanted)
{
    if (writable_wanted == fp.forward_blocked)
        return;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &fp.forward_entry};
    epoll_ctl(fp.epoll, writable_wanted ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fp.forward, &ev);
    fp.forward_blocked = writable_wanted;
}

/* The pair has room again: send what waited, oldest first. */
static void flush_forward(void)
{
    while (fp.backlog != NULL) {
        struct forward *f = fp.backlog;
        if (!send_forward(f->client, &f->msg))
            return;
        fp.backlog = f->next;
        free(f);
    }
    watch_forward(false);
}

/* Hands the request and the client's fd to the Python agent, which answers it. Never blocks:
 * the Python agent may itself be waiting for our mutex. */
static void forward(int client, const struct boxer_msg *msg)
{
    if (fp.backlog == NULL && send_forward(client, msg))
        return;
    struct forward *f = malloc(sizeof *f);
    if (f == NULL) {
        close(client); /* the interposer sees the agent hang up: ENETUNREACH */
        return;
    }
    *f = (struct forward){.client = client, .msg = *msg};
    struct forward **tail = &fp.backlog;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = f;
    watch_forward(true);
}

/* ---- client side: CONNECT from a spare -------------------------------------------------- */

/* Still open at the far end? (A server agent closes spares it no longer wants.) */
static bool spare_usable(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
    return n > 0;
}

static struct spare *take_spare(uint32_t addr, uint16_t port)
{
    double t = now();
    for (struct spare **pp = &fp.spares; *pp != NULL;) {
        struct spare *s = *pp;
        if (s->addr != addr || s->port != port) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        if (t < s->expires && spare_usable(s->fd))
            return s;
        close(s->fd);
        free(s);
    }
    return NULL;
}

static bool serve_connect(int client, struct boxer_msg *msg)
{
    uint32_t addr;
    memcpy(&addr, msg->addr, sizeof addr);
    if (addr == fp.own_addr)
        return false; /* a connect to ourselves: Python's local path */
    struct spare *s;
    while ((s = take_spare(addr, msg->port)) != NULL) {
        char go = GO_BYTE;
        /* One byte into an empty send buffer: it goes at once or the connection is dead. */
        if (send(s->fd, &go, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1)
            break;
        close(s->fd);
        free(s);
    }
    if (s == NULL)
        return false;
    memcpy(msg->addr, &fp.own_addr, sizeof fp.own_addr);
    msg->port = s->local_port;
    reply(client, msg, 0, s->fd);
    emit(EV_SPARE_USED, s->port, s->local_port, s->addr);
    close(s->fd);
    free(s);
    return true;
}

/* ---- server side: GO, wake, ACCEPT ------------------------------------------------------ */

/* Makes the app's listener on `port` fire with a loopback connection from the wake address;
 * the interposer trades it for `sock` with an ACCEPT naming the wake connection's port. */
static int wake_app(int sock, uint16_t port, uint32_t peer_addr, uint16_t peer_port,
                    uint32_t wake_addr)
{
    int w = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (w < 0)
        goto fail;
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = wake_addr};
    if (bind(w, (struct sockaddr *)&src, sizeof src) < 0)
        goto fail;
    uint16_t wake_port = local_port_of(w);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool connecting = false;
    if (connect(w, (struct sockaddr *)&dst, sizeof dst) < 0) {
        if (errno != EINPROGRESS)
            goto fail; /* the app no longer listens: the client sees a reset */
        connecting = true;
    }
    struct entry *e = add_entry(K_WAKE, w, connecting ? EPOLLOUT : 0, now() + fp.accept_pickup);
    if (e == NULL)
        goto fail;
    e->sock = sock;
    e->port = port;
    e->wake_port = wake_port;
    e->peer_addr = peer_addr;
    e->peer_port = peer_port;
    e->connecting = connecting;
    return 0;
fail:
    if (w >= 0)
        close(w);
    close(sock);
    emit(EV_WAKE_FAILED, port, 0, 0);
    return -1;
}

static void on_held(struct entry *e)
{
    char b = 0;
    ssize_t n = recv(e->fd, &b, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    uint16_t port = e->port;
    int sock = e->fd;
    e->fd = -1;
    uint32_t peer_addr = e->peer_addr;
    uint16_t peer_port = e->peer_port;
    epoll_ctl(fp.epoll, EPOLL_CTL_DEL, sock, NULL);
    drop_entry(e);
    emit(EV_HELD_DONE, port, 0, 0);
    if (n != 1 || b != GO_BYTE || fp.listening[port] == 0) {
        close(sock); /* unused, or the app stopped listening meanwhile: the client sees a reset */
        return;
    }
    /* ACK the GO byte now: a delayed ACK would hold the client app's first small write behind
     * Nagle for up to 40 ms (setting TCP_QUICKACK sends a pending ACK at once). */
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    wake_app(sock, port, peer_addr, peer_port, fp.wake_addr);
}

static void on_wake_writable(struct entry *e)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        emit(EV_WAKE_FAILED, e->port, 0, 0);
        drop_entry(e);
        return;
    }
    e->connecting = false;
    epoll_ctl(fp.epoll, EPOLL_CTL_DEL, e->fd, NULL);
}

static bool serve_accept(int client, struct boxer_msg *msg)
{
    for (struct entry *e = fp.entries; e != NULL; e = e->next) {
        if (e->kind != K_WAKE || e->port != msg->port || e->wake_port != msg->token)
            continue;
        memcpy(msg->addr, &e->peer_addr, sizeof e->peer_addr);
        msg->port = e->peer_port;
        reply(client, msg, 0, e->sock);
        emit(EV_ACCEPTED, e->port, local_port_of(e->sock), 0);
        drop_entry(e); /* closes our copies of the connection and of the wake socket */
        return true;
    }
    return false;
}

/* ---- the interposer's requests ---------------------------------------------------------- */

static void serve_request(int client, struct boxer_msg *msg)
{
    bool served = false;
    if (msg->magic == BOXER_MAGIC && msg->op == BOXER_OP_CONNECT)
        served = serve_connect(client, msg);
    else if (msg->magic == BOXER_MAGIC && msg->op == BOXER_OP_ACCEPT)
        served = serve_accept(client, msg);
    if (served)
        close(client);
    else
        forward(client, msg); /* Python answers it, and validates what we did not */
}

static void on_client(struct entry *e)
{
    for (;;) {
        ssize_t n = recv(e->fd, (char *)&e->msg + e->got, sizeof e->msg - e->got, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            drop_entry(e);
            return;
        }
        e->got += (size_t)n;
        if (e->got == sizeof e->msg) {
            int client = e->fd;
            e->fd = -1;
            epoll_ctl(fp.epoll, EPOLL_CTL_DEL, client, NULL);
            struct boxer_msg msg = e->msg;
            drop_entry(e);
            serve_request(client, &msg);
            return;
        }
    }
}

static void on_listener(void)
{
    for (;;) {
        int c = accept4(fp.listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or out of descriptors: epoll tells us again */
        }
        struct bx_peer who;
        if (!bx_peer_allowed(c, fp.agent_pid, &who)) {
            /* Closed unread: no answer, no descriptor; the Python agent logs it. */
            close(c);
            emit_full(EV_REFUSED, 0, 0, (uint32_t)who.pid, (uint32_t)who.uid);
            continue;
        }
        struct entry *e = add_entry(K_CLIENT, c, EPOLLIN, now() + CLIENT_READ_TIMEOUT);
        if (e == NULL) {
            close(c);
            continue;
        }
        on_client(e); /* the request is usually there already */
    }
}

/* ---- the thread ------------------------------------------------------------------------- */

static void expire(double t)
{
    for (struct entry *e = fp.entries, *next; e != NULL; e = next) {
        next = e->next;
        if (e->deadline == 0 || t < e->deadline)
            continue;
        if (e->kind == K_HELD)
            emit(EV_HELD_DONE, e->port, 0, 0);
        else if (e->kind == K_WAKE)
            emit(EV_WAKE_FAILED, e->port, 0, 0); /* the app never accepted it */
        drop_entry(e);
    }
    for (struct spare **pp = &fp.spares; *pp != NULL;) {
        struct spare *s = *pp;
        if (t < s->expires) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        close(s->fd);
        free(s);
    }
}

static int next_timeout_ms(double t)
{
    double first = 0;
    for (struct entry *e = fp.entries; e != NULL; e = e->next)
        if (e->deadline != 0 && (first == 0 || e->deadline < first))
            first = e->deadline;
    for (struct spare *s = fp.spares; s != NULL; s = s->next)
        if (first == 0 || s->expires < first)
            first = s->expires;
    if (first == 0)
        return -1;
    double ms = (first - t) * 1000.0 + 1.0;
    return ms < 0 ? 0 : ms > 60000 ? 60000 : (int)ms;
}

static void *run(void *arg)
{
    (void)arg;
    struct epoll_event evs[64];
    for (;;) {
        pthread_mutex_lock(&fp.mutex);
        int timeout = next_timeout_ms(now());
        pthread_mutex_unlock(&fp.mutex);
        int n = epoll_wait(fp.epoll, evs, 64, timeout);
        if (n < 0 && errno != EINTR)
            break;
        pthread_mutex_lock(&fp.mutex);
        bool stop = false;
        for (int i = 0; i < n; i++) {
            struct entry *e = evs[i].data.ptr;
            if (e->dead)
                continue;
            switch (e->kind) {
            case K_LISTENER:
                on_listener();
                break;
            case K_CONTROL: {
                uint64_t count;
                (void)!read(fp.control, &count, sizeof count);
                stop = !fp.running;
                break;
            }
            case K_FORWARD:
                flush_forward();
                break;
            case K_CLIENT:
                on_client(e);
                break;
            case K_HELD:
                on_held(e);
                break;
            case K_WAKE:
                on_wake_writable(e);
                break;
            }
        }
        expire(now());
        bury_the_dead();
        pthread_mutex_unlock(&fp.mutex);
        if (stop)
            break;
    }
    return NULL;
}

/* ---- the Python agent's interface ------------------------------------------------------- */

/* Starts the thread. listener: the interposer's Unix listener; forward: our end of the
 * SOCK_SEQPACKET pair to Python; events: the write end of a non-blocking pipe; addresses in
 * network order. Returns 0, or -1 with errno. */
EXPORT int bx_fp_start(int listener, int forward_fd, int events, uint32_t own_addr,
                       uint32_t wake_addr, double accept_pickup)
{
    pthread_mutex_lock(&fp.mutex);
    if (fp.running) {
        pthread_mutex_unlock(&fp.mutex);
        errno = EBUSY;
        return -1;
    }
    fp.listener = listener;
    fp.forward = forward_fd;
    fp.events = events;
    fp.own_addr = own_addr;
    fp.wake_addr = wake_addr;
    fp.accept_pickup = accept_pickup;
    fp.agent_pid = getpid();
    fp.epoll = epoll_create1(EPOLL_CLOEXEC);
    fp.control = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    fp.listener_entry = (struct entry){.kind = K_LISTENER, .fd = listener};
    fp.control_entry = (struct entry){.kind = K_CONTROL, .fd = fp.control};
    fp.forward_entry = (struct entry){.kind = K_FORWARD, .fd = forward_fd};
    fp.forward_blocked = false;
    struct epoll_event l = {.events = EPOLLIN, .data.ptr = &fp.listener_entry};
    struct epoll_event c = {.events = EPOLLIN, .data.ptr = &fp.control_entry};
    int flags = fcntl(listener, F_GETFL);
    if (fp.epoll < 0 || fp.control < 0 || flags < 0 ||
        fcntl(listener, F_SETFL, flags | O_NONBLOCK) < 0 ||
        epoll_ctl(fp.epoll, EPOLL_CTL_ADD, listener, &l) < 0 ||
        epoll_ctl(fp.epoll, EPOLL_CTL_ADD, fp.control, &c) < 0)
        goto fail;
    /* Our thread must never run the agent's signal handlers. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&fp.thread, NULL, run, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errno = rc;
        goto fail;
    }
    fp.running = true;
    pthread_mutex_unlock(&fp.mutex);
    return 0;
fail:;
    int saved = errno;
    if (fp.epoll >= 0)
        close(fp.epoll);
    if (fp.control >= 0)
        close(fp.control);
    fp.epoll = fp.control = -1;
    pthread_mutex_unlock(&fp.mutex);
    errno = saved;
    return -1;
}

/* Stops the thread and closes every descriptor we own (not the listener, forward or events). */
EXPORT void bx_fp_stop(void)
{
    pthread_mutex_lock(&fp.mutex);
    bool running = fp.running;
    fp.running = false;
    if (running)
        poke();
    pthread_mutex_unlock(&fp.mutex);
    if (!running)
        return;
    pthread_join(fp.thread, NULL);
    pthread_mutex_lock(&fp.mutex);
    while (fp.entries != NULL)
        drop_entry(fp.entries);
    bury_the_dead();
    while (fp.backlog != NULL) {
        struct forward *f = fp.backlog;
        fp.backlog = f->next;
        close(f->client);
        free(f);
    }
    while (fp.spares != NULL) {
        struct spare *s = fp.spares;
        fp.spares = s->next;
        close(s->fd);
        free(s);
    }
    memset(fp.listening, 0, sizeof fp.listening);
    bx_peer_forget();
    close(fp.epoll);
    close(fp.control);
    fp.epoll = fp.control = -1;
    pthread_mutex_unlock(&fp.mutex);
}

/* A client-side spare for (addr, port), usable for max_age seconds. Takes fd. */
EXPORT int bx_fp_put_spare(uint32_t addr, uint16_t port, int fd, uint16_t local_port,
                           double max_age)
{
    struct spare *s = calloc(1, sizeof *s);
    if (s == NULL) {
        close(fd);
        return -1;
    }
    *s = (struct spare){.addr = addr, .port = port, .local_port = local_port, .fd = fd};
    pthread_mutex_lock(&fp.mutex);
    s->expires = now() + max_age;
    s->next = fp.spares;
    fp.spares = s;
    poke(); /* its expiry is a new deadline for the thread */
    pthread_mutex_unlock(&fp.mutex);
    return 0;
}

/* Live spares for (addr, port). */
EXPORT int bx_fp_spare_count(uint32_t addr, uint16_t port)
{
    int count = 0;
    pthread_mutex_lock(&fp.mutex);
    double t = now();
    for (struct spare *s = fp.spares; s != NULL; s = s->next)
        if (s->addr == addr && s->port == port && t < s->expires)
            count++;
    pthread_mutex_unlock(&fp.mutex);
    return count;
}

/* Server side: hold our end of a client's spare until its GO byte (then wake the app), its
 * close, or max_wait seconds. Takes fd. */
EXPORT int bx_fp_hold(int fd, uint16_t port, uint32_t peer_addr, uint16_t peer_port,
                      double max_wait)
{
    pthread_mutex_lock(&fp.mutex);
    struct entry *e = add_entry(K_HELD, fd, EPOLLIN | EPOLLRDHUP, now() + max_wait);
    if (e == NULL) {
        pthread_mutex_unlock(&fp.mutex);
        close(fd);
        return -1;
    }
    e->port = port;
    e->peer_addr = peer_addr;
    e->peer_port = peer_port;
    poke();
    pthread_mutex_unlock(&fp.mutex);
    return 0;
}

/* Server side: wake the app for a connection made the slow way. Takes fd. */
EXPORT int bx_fp_wake(int fd, uint16_t port, uint32_t peer_addr, uint16_t peer_port)
{
    pthread_mutex_lock(&fp.mutex);
    int rc = wake_app(fd, port, peer_addr, peer_port, fp.wake_addr);
    pthread_mutex_unlock(&fp.mutex);
    return rc;
}

/* How many listening sockets the app has on port. At 0, spares held for it are closed, so
 * their clients fall back to a real refusal. */
EXPORT void bx_fp_set_listening(uint16_t port, int count)
{
    pthread_mutex_lock(&fp.mutex);
    fp.listening[port] = count < 0 ? 0 : count > 65535 ? 65535 : (uint16_t)count;
    if (count <= 0) {
        for (struct entry *e = fp.entries, *next; e != NULL; e = next) {
            next = e->next;
            if (e->kind == K_HELD && e->port == port) {
                emit(EV_HELD_DONE, port, 0, 0);
                drop_entry(e);
            }
        }
    }
    pthread_mutex_unlock(&fp.mutex);
}

/* Server side: spares held now (bounded by the agent). */
EXPORT int bx_fp_held_count(void)
{
    int count = 0;
    pthread_mutex_lock(&fp.mutex);
    for (struct entry *e = fp.entries; e != NULL; e = e->next)
        count += e->kind == K_HELD;
    pthread_mutex_unlock(&fp.mutex);
    return count;
}

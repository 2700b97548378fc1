/* One request/reply exchange with the agent (see boxer/agent/ipc.py for the protocol).
 *
 * A fresh AF_UNIX stream connection per request keeps this free of shared state across threads
 * and fork. The connection is made with the real libc functions and SOCK_CLOEXEC, received fds
 * get MSG_CMSG_CLOEXEC, so nothing of ours leaks into an exec'd child or into the fd table.
 * No lock is held here. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "boxer_internal.h"

/* How long we wait for the agent, per op. CONNECT has no bound of ours: the agent owns its
 * deadline (it may start the target instance first) and answers ETIMEDOUT itself. HELLO runs in
 * the constructor of every process and must never hold a program up for long. */
static int timeout_ms(uint32_t op)
{
    switch (op) {
    case BOXER_OP_HELLO:
        return 1000;
    case BOXER_OP_CONNECT:
        return 0;
    default:
        return 30000;
    }
}

const char *boxer_op_name(uint32_t op)
{
    static const char *const names[] = {"?",      "HELLO",  "RESOLVE",  "REVERSE",
                                        "CONNECT", "LISTEN", "UNLISTEN", "ACCEPT"};
    return op < sizeof names / sizeof names[0] ? names[op] : "?";
}

void boxer_msg_init(struct boxer_msg *m, enum boxer_op op)
{
    memset(m, 0, sizeof *m);
    m->magic = BOXER_MAGIC;
    m->op = op;
    m->pid = (int32_t)getpid();
    m->family = AF_INET;
}

static int open_agent(uint32_t op)
{
    const struct boxer_config *c = boxer_config();
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, c->agent_sock); /* length checked when the config was read */
    int s = libc_socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    int ms = timeout_ms(op);
    if (ms > 0) {
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        libc_setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        libc_setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    int rc;
    do
        rc = libc_connect(s, (struct sockaddr *)&sun, sizeof sun);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        int saved = errno;
        libc_close(s);
        errno = saved;
        return -1;
    }
    return s;
}

static int send_all(int s, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(s, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes; collects at most one fd from any SCM_RIGHTS data on the way
 * (extra fds are closed: the protocol allows one). */
static int recv_all(int s, void *buf, size_t len, int *fd)
{
    char *p = buf;
    while (len > 0) {
        union {
            struct cmsghdr hdr;
            char buf[CMSG_SPACE(sizeof(int) * 4)];
        } control;
        struct iovec iov = {.iov_base = p, .iov_len = len};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = libc_recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                if (*fd < 0) {
                    *fd = got;
                } else {
                    BOXER_LOG(WARN, "agent sent more than one fd; closing fd %d", got);
                    libc_close(got);
                }
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            BOXER_LOG(WARN, "agent sent more fds than fit; some were dropped by the kernel");
        if (n == 0) {
            errno = ECONNRESET; /* the agent hung up mid-reply */
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int boxer_agent_send(const struct boxer_msg *req)
{
    int s = open_agent(req->op);
    if (s < 0) {
        BOXER_LOG(WARN, "%s: cannot reach the agent at %s: %s", boxer_op_name(req->op),
                  boxer_config()->agent_sock, strerror(errno));
        return -1;
    }
    if (send_all(s, req, sizeof *req) < 0) {
        int saved = errno;
        BOXER_LOG(WARN, "%s: agent exchange failed: %s", boxer_op_name(req->op), strerror(saved));
        libc_close(s);
        errno = saved;
        return -1;
    }
    return s;
}

int boxer_agent_finish(int s, const struct boxer_msg *req, struct boxer_msg *reply, int *fd_out)
{
    int fd = -1;
    int rc = recv_all(s, reply, sizeof *reply, &fd);
    int saved = errno;
    libc_close(s);
    if (rc < 0) {
        if (saved == EAGAIN || saved == EWOULDBLOCK)
            saved = ETIMEDOUT;
        BOXER_LOG(WARN, "%s: agent exchange failed: %s", boxer_op_name(req->op), strerror(saved));
    } else if (reply->magic != BOXER_MAGIC || reply->op != req->op) {
        BOXER_LOG(ERROR, "%s: malformed reply (magic %#x, op %u)", boxer_op_name(req->op),
                  reply->magic, reply->op);
        saved = EPROTO;
        rc = -1;
    }
    if (rc < 0 || fd_out == NULL) {
        if (fd >= 0) {
            if (rc == 0)
                BOXER_LOG(WARN, "%s: unexpected fd from the agent; closed", boxer_op_name(req->op));
            libc_close(fd);
        }
        fd = -1;
    }
    if (fd_out != NULL)
        *fd_out = fd;
    errno = saved;
    return rc;
}

int boxer_agent_call(const struct boxer_msg *req, struct boxer_msg *reply, int *fd_out)
{
    int s = boxer_agent_send(req);
    if (s < 0) {
        if (fd_out != NULL)
            *fd_out = -1;
        return -1;
    }
    return boxer_agent_finish(s, req, reply, fd_out);
}

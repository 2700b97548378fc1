/* Shared declarations of the interposer's modules.
 *
 *   symbols.c   the real libc functions (libc_*), bound once with dlsym(RTLD_NEXT)
 *   config.c    environment variables (read once) and the logging macro
 *   fdtable.c   fd -> socket info table, the one mutex, fork handlers
 *   agent.c     one request/reply exchange with the agent over its Unix socket
 *   sockets.c   socket/bind/listen/accept/connect/close/dup/fcntl/getsockname/getpeername
 *   names.c     getaddrinfo, gethostbyname*, getnameinfo, gethostbyaddr, gethostname, uname
 *   preload.c   the constructor (HELLO)
 *
 * Naming follows socket_wrapper: the exported `connect` calls our `boxer_connect`, which calls
 * the real `libc_connect` for anything it does not handle itself.
 */
#ifndef BOXER_INTERNAL_H
#define BOXER_INTERNAL_H

#include <netdb.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include "boxer_proto.h"

#define BOXER_EXPORT __attribute__((visibility("default")))
#define BOXER_HIDDEN __attribute__((visibility("hidden")))

/* ---- symbols.c ----------------------------------------------------------------------- */

/* X(return type, name, parameter list, argument list). Variadic fcntl is declared by hand. */
#define BOXER_LIBC_SYMBOLS(X)                                                                     \
    X(int, socket, (int domain, int type, int protocol), (domain, type, protocol))                \
    X(int, bind, (int fd, const struct sockaddr *addr, socklen_t len), (fd, addr, len))           \
    X(int, listen, (int fd, int backlog), (fd, backlog))                                          \
    X(int, accept, (int fd, struct sockaddr *addr, socklen_t *len), (fd, addr, len))              \
    X(int, accept4, (int fd, struct sockaddr *addr, socklen_t *len, int flags),                   \
      (fd, addr, len, flags))                                                                     \
    X(int, connect, (int fd, const struct sockaddr *addr, socklen_t len), (fd, addr, len))        \
    X(int, close, (int fd), (fd))                                                                 \
    X(int, close_range, (unsigned int first, unsigned int last, int flags), (first, last, flags)) \
    X(int, dup, (int fd), (fd))                                                                   \
    X(int, dup2, (int oldfd, int newfd), (oldfd, newfd))                                          \
    X(int, dup3, (int oldfd, int newfd, int flags), (oldfd, newfd, flags))                        \
    X(int, getsockname, (int fd, struct sockaddr *addr, socklen_t *len), (fd, addr, len))         \
    X(int, getpeername, (int fd, struct sockaddr *addr, socklen_t *len), (fd, addr, len))         \
    X(int, getsockopt, (int fd, int level, int name, void *val, socklen_t *len),                  \
      (fd, level, name, val, len))                                                                \
    X(int, setsockopt, (int fd, int level, int name, const void *val, socklen_t len),             \
      (fd, level, name, val, len))                                                                \
    X(ssize_t, recvmsg, (int fd, struct msghdr *msg, int flags), (fd, msg, flags))                \
    X(int, epoll_ctl, (int epfd, int op, int fd, struct epoll_event *ev), (epfd, op, fd, ev))     \
    X(int, getaddrinfo,                                                                           \
      (const char *node, const char *service, const struct addrinfo *hints,                       \
       struct addrinfo **res),                                                                    \
      (node, service, hints, res))                                                                \
    X(void, freeaddrinfo, (struct addrinfo * res), (res))                                         \
    X(int, getnameinfo,                                                                           \
      (const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen, char *serv,     \
       socklen_t servlen, int flags),                                                             \
      (sa, salen, host, hostlen, serv, servlen, flags))                                           \
    X(struct hostent *, gethostbyname, (const char *name), (name))                                \
    X(struct hostent *, gethostbyname2, (const char *name, int af), (name, af))                   \
    X(int, gethostbyname_r,                                                                       \
      (const char *name, struct hostent *ret, char *buf, size_t buflen, struct hostent **result,  \
       int *h_errnop),                                                                            \
      (name, ret, buf, buflen, result, h_errnop))                                                 \
    X(int, gethostbyname2_r,                                                                      \
      (const char *name, int af, struct hostent *ret, char *buf, size_t buflen,                   \
       struct hostent **result, int *h_errnop),                                                   \
      (name, af, ret, buf, buflen, result, h_errnop))                                             \
    X(struct hostent *, gethostbyaddr, (const void *addr, socklen_t len, int type),               \
      (addr, len, type))                                                                          \
    X(int, gethostbyaddr_r,                                                                       \
      (const void *addr, socklen_t len, int type, struct hostent *ret, char *buf, size_t buflen,  \
       struct hostent **result, int *h_errnop),                                                   \
      (addr, len, type, ret, buf, buflen, result, h_errnop))                                      \
    X(FILE *, fopen, (const char *path, const char *mode), (path, mode))                          \
    X(FILE *, fopen64, (const char *path, const char *mode), (path, mode))                        \
    X(int, gethostname, (char *name, size_t len), (name, len))                                    \
    X(int, uname, (struct utsname * buf), (buf))                                                  \
    X(int, execve, (const char *path, char *const argv[], char *const envp[]), (path, argv, envp)) \
    X(int, execvpe, (const char *file, char *const argv[], char *const envp[]), (file, argv, envp)) \
    X(int, fexecve, (int fd, char *const argv[], char *const envp[]), (fd, argv, envp))           \
    X(int, execveat, (int dirfd, const char *path, char *const argv[], char *const envp[],        \
                      int flags), (dirfd, path, argv, envp, flags))                               \
    X(int, posix_spawn, (pid_t * pid, const char *path, const posix_spawn_file_actions_t *actions, \
                         const posix_spawnattr_t *attr, char *const argv[], char *const envp[]),  \
      (pid, path, actions, attr, argv, envp))                                                     \
    X(int, posix_spawnp, (pid_t * pid, const char *file, const posix_spawn_file_actions_t *actions, \
                          const posix_spawnattr_t *attr, char *const argv[], char *const envp[]), \
      (pid, file, actions, attr, argv, envp))

#define BOXER_DECLARE_LIBC(ret, name, params, args) BOXER_HIDDEN ret libc_##name params;
BOXER_LIBC_SYMBOLS(BOXER_DECLARE_LIBC)
#undef BOXER_DECLARE_LIBC
BOXER_HIDDEN int libc_fcntl(int fd, int cmd, void *arg);
/* open/open64/openat/openat64 are variadic (mode): declared by hand like fcntl. */
BOXER_HIDDEN int libc_open(const char *path, int flags, mode_t mode);
BOXER_HIDDEN int libc_open64(const char *path, int flags, mode_t mode);
BOXER_HIDDEN int libc_openat(int dirfd, const char *path, int flags, mode_t mode);
BOXER_HIDDEN int libc_openat64(int dirfd, const char *path, int flags, mode_t mode);

/* ---- config.c ------------------------------------------------------------------------ */

#define BOXER_ENV_VARS 9 /* BOXER_* variables an exec'd program inherits (config.c: env_names) */

enum boxer_log_level { BOXER_LOG_ERROR = 0, BOXER_LOG_WARN, BOXER_LOG_INFO, BOXER_LOG_DEBUG };

struct boxer_config {
    bool enabled;          /* BOXER_AGENT_SOCK set: otherwise every call goes straight to libc */
    char agent_sock[108];  /* sun_path */
    const char *name;      /* BOXER_NAME or NULL */
    const char *resolv_conf; /* BOXER_RESOLV_CONF (absolute path) or NULL */
    bool have_addr;        /* BOXER_ADDR parsed */
    struct in_addr addr;   /* BOXER_ADDR */
    uint32_t prefix_net;   /* BOXER_PREFIX, host order, masked */
    uint32_t prefix_mask;  /* host order */
    struct in_addr wake;   /* BOXER_WAKE_ADDR */
    enum boxer_log_level log_level;
    /* For exec (exec.c): what a program we exec must be given to stay in the overlay. */
    const char *library;          /* our own path (dladdr), or NULL */
    const char *ld_preload_entry; /* "LD_PRELOAD=<library>" */
    const char *env[BOXER_ENV_VARS]; /* "NAME=value" of each of our variables that is set */
    const char *allow_unwrapped;  /* BOXER_ALLOW_UNWRAPPED (colon-separated globs) or NULL */
};

/* Reads the environment once (pthread_once) and returns the result; never NULL. */
BOXER_HIDDEN const struct boxer_config *boxer_config(void);
/* true: BOXER_AGENT_SOCK is set and we run in the process that owns our state. A child sharing
 * the parent's memory (vfork, posix_spawn, clone(CLONE_VM)) gets false: every wrapper then goes
 * straight to libc, taking no lock and allocating nothing (one getpid syscall per call). */
BOXER_HIDDEN bool boxer_enabled(void);
/* true in a child that shares the memory of the process that owns our state (see above). */
BOXER_HIDDEN bool boxer_in_vm_child(void);
BOXER_HIDDEN bool boxer_in_overlay(struct in_addr a);

BOXER_HIDDEN void boxer_log_impl(enum boxer_log_level level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "boxer-preload[pid] func: msg" on stderr, if level <= BOXER_LOG. errno is preserved. */
#define BOXER_LOG(level, ...) boxer_log_impl(BOXER_LOG_##level, __func__, __VA_ARGS__)
/* A broken invariant of ours (a lock that failed): "boxer-preload[pid] BUG: what: error" on
 * stderr whatever BOXER_LOG says, then abort(). */
BOXER_HIDDEN void boxer_die(const char *what, int err) __attribute__((noreturn));
/* Locks and unlocks an error-checking mutex of ours, dying on failure (see boxer_die). */
BOXER_HIDDEN void boxer_mutex_init(pthread_mutex_t *m);
BOXER_HIDDEN void boxer_mutex_lock(pthread_mutex_t *m, const char *what);
BOXER_HIDDEN void boxer_mutex_unlock(pthread_mutex_t *m, const char *what);

/* ---- fdtable.c ----------------------------------------------------------------------- */

#define BOXER_EPOLL_MAX 4 /* epoll sets one unconnected socket may be in, for replay */

/* What we know about one tracked socket (AF_INET/AF_INET6, SOCK_STREAM). Shared by all fds
 * that refer to it in this process (dup), refcount = number of table slots pointing here. */
struct boxer_sock {
    int refcount;
    int family;               /* AF_INET or AF_INET6: the family the app sees */
    bool bound_overlay;       /* bind() to BOXER_ADDR, really bound to 127.0.0.1 */
    bool listening;           /* overlay listener: LISTEN was sent */
    int listen_pid;           /* the process that sent LISTEN: only it sends UNLISTEN */
    uint16_t listen_port;     /* host order */
    bool connected;           /* the fd is an overlay connection (CONNECT or ACCEPT) */
    struct sockaddr_in local; /* overlay addresses when connected */
    struct sockaddr_in peer;
    /* Asynchronous connect (O_NONBLOCK socket, see sockets.c). */
    uint32_t connect_id;      /* nonzero while the agent works on it: the fd is a placeholder */
    int connect_error;        /* its failure, reported once by SO_ERROR or the next connect */
    bool connect_unreported;  /* finished; the next connect() reports the outcome (kernel-like) */
    /* epoll registrations of this fd made while it could still be swapped (not connected, not
     * listening), replayed onto the socket that replaces it. Kept by fdtable.c only:
     * boxer_fd_update never overwrites them. */
    int nepoll;
    struct {
        int epfd;
        struct epoll_event ev;
    } epoll[BOXER_EPOLL_MAX];
};

/* Whether fd has an entry: lock-free (an atomic read of the published table), so safe in a
 * child that shares our memory, and cheap enough for every call on every fd. */
BOXER_HIDDEN bool boxer_fd_tracked(int fd);
/* All functions below take the table mutex themselves and never block otherwise. */
/* Copies the info of fd into *out; false if fd is not tracked. */
BOXER_HIDDEN bool boxer_fd_get(int fd, struct boxer_sock *out);
/* Starts tracking a new socket on fd (replacing any stale entry). */
BOXER_HIDDEN void boxer_fd_track(int fd, int family);
/* Stores *info as fd's info; if fd's info is shared with other fds, fd gets its own copy. */
BOXER_HIDDEN void boxer_fd_update(int fd, const struct boxer_sock *info);
/* fd is no longer open. Returns the port to UNLISTEN (last reference of a listener this
 * process registered), or 0. */
BOXER_HIDDEN uint16_t boxer_fd_drop(int fd);
/* Drops the tracked fds in [*next, last]. Stops early when one was the last reference to a
 * listener of ours: sets *port, advances *next past it and returns true (call again). */
BOXER_HIDDEN bool boxer_fd_drop_range(unsigned int *next, unsigned int last, uint16_t *port);
/* newfd now refers to the same socket as oldfd (dup family). Returns the port to UNLISTEN if
 * newfd was the last reference to a listener before, or 0. */
BOXER_HIDDEN uint16_t boxer_fd_dup(int oldfd, int newfd);
/* epoll_ctl on fd, if fd is a tracked socket that may still be swapped: performs it under the
 * table lock, records the registration, sets *rc and returns true. false: not ours, call libc. */
BOXER_HIDDEN bool boxer_fd_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev, int *rc);
/* Puts `received` (a connected socket from the agent) in place of fd, atomically with respect
 * to close/epoll_ctl: keeps fd's FD_CLOEXEC and O_NONBLOCK as they are now, moves fd's recorded
 * epoll registrations to the new socket and marks it connected (local/peer: overlay
 * addresses). connect_id != 0: only if fd still carries that asynchronous connect (the app may
 * have closed it meanwhile), and pollers of the placeholder are woken. Closes `received`.
 * Returns 0, or -1 with errno (ECANCELED: the connect was abandoned). */
BOXER_HIDDEN int boxer_fd_finish_connect(int fd, uint32_t connect_id, int received,
                                         const struct sockaddr_in *local,
                                         const struct sockaddr_in *peer);
/* An asynchronous connect failed with err: if fd still carries connect_id, records the error
 * for SO_ERROR and makes the placeholder ready (POLLOUT|POLLHUP), as a failed connect is. */
BOXER_HIDDEN void boxer_fd_fail_connect(int fd, uint32_t connect_id, int err);
/* SO_ERROR: if fd has a recorded connect error, returns true with it in *err and clears it. */
BOXER_HIDDEN bool boxer_fd_take_error(int fd, int *err);
/* Lists registry for addrinfo results we allocated (freeaddrinfo must tell them apart). */
/* false when out of memory: the caller then frees the list and fails with EAI_MEMORY. */
BOXER_HIDDEN bool boxer_ai_register(struct addrinfo *ai);
BOXER_HIDDEN bool boxer_ai_unregister(struct addrinfo *ai);

/* BOXER_FDS for a program we are about to exec: the overlay state of the descriptors it will
 * inherit, written into buf ("BOXER_FDS=..."); NULL if there are none (or in a CLONE_VM child,
 * which must not read our table). */
#define BOXER_FDS_MAX 8192
BOXER_HIDDEN const char *boxer_fds_env(char *buf, size_t cap);
/* The constructor's half: takes over the entries of BOXER_FDS whose fd is still that socket. */
BOXER_HIDDEN void boxer_fds_import(void);

/* ---- agent.c ------------------------------------------------------------------------- */

/* A request with magic, op and pid filled in. */
BOXER_HIDDEN void boxer_msg_init(struct boxer_msg *m, enum boxer_op op);
/* One exchange with the agent. Returns 0 with *reply filled (and *fd_out = the attached fd or
 * -1 when fd_out is given; an unexpected fd is closed), or -1 with errno set when the agent
 * could not be reached or broke the protocol. reply->status is the agent's answer. */
BOXER_HIDDEN int boxer_agent_call(const struct boxer_msg *req, struct boxer_msg *reply,
                                  int *fd_out);
/* The same exchange in two halves, for the asynchronous connect: send returns the agent
 * connection (or -1 with errno), finish reads the reply on it and closes it. */
BOXER_HIDDEN int boxer_agent_send(const struct boxer_msg *req);
BOXER_HIDDEN int boxer_agent_finish(int s, const struct boxer_msg *req, struct boxer_msg *reply,
                                    int *fd_out);
BOXER_HIDDEN const char *boxer_op_name(uint32_t op);

/* ---- sockets.c / names.c helpers ----------------------------------------------------- */

/* Writes a (v4) address in the given family (AF_INET6: v4-mapped) into addr/len, truncating
 * like the kernel: copies at most *len bytes and sets *len to the full size. */
BOXER_HIDDEN void boxer_sockaddr_out(int family, const struct sockaddr_in *v4,
                                     struct sockaddr *addr, socklen_t *len);
/* Extracts an IPv4 address (AF_INET, or AF_INET6 v4-mapped) from addr; false otherwise. */
BOXER_HIDDEN bool boxer_sockaddr_v4(const struct sockaddr *addr, socklen_t len,
                                    struct sockaddr_in *out);

#endif

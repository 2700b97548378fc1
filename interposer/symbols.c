/* The real libc functions, bound lazily and once (pthread_once + dlsym(RTLD_NEXT)) from the
 * table in boxer_internal.h. Our own sockets (the agent connection) always use these, so they
 * never pass through our wrappers. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "boxer_internal.h"

#define BOXER_POINTER(ret, name, params, args) ret(*name) params;
static struct {
    BOXER_LIBC_SYMBOLS(BOXER_POINTER)
    int (*fcntl)(int fd, int cmd, ...);
    int (*open)(const char *path, int flags, ...);
    int (*open64)(const char *path, int flags, ...);
    int (*openat)(int dirfd, const char *path, int flags, ...);
    int (*openat64)(int dirfd, const char *path, int flags, ...);
} libc;
#undef BOXER_POINTER

static pthread_once_t bind_once = PTHREAD_ONCE_INIT;

static void *bind_symbol(const char *name)
{
    void *sym = dlsym(RTLD_NEXT, name);
    /* No BOXER_LOG here: logging reads the config, which may not be loaded yet. A missing
     * symbol (close_range on an old glibc) makes that call fail with ENOSYS. */
    if (sym == NULL) {
        char msg[160];
        int n = snprintf(msg, sizeof msg, "boxer-preload[%d] bind_symbol: %s not found\n",
                         (int)getpid(), name);
        if (n > 0 && getenv("BOXER_LOG") != NULL)
            (void)!write(STDERR_FILENO, msg, (size_t)n);
    }
    return sym;
}

static void bind_all(void)
{
#define BOXER_BIND(ret, name, params, args) *(void **)(&libc.name) = bind_symbol(#name);
    BOXER_LIBC_SYMBOLS(BOXER_BIND)
#undef BOXER_BIND
    *(void **)(&libc.fcntl) = bind_symbol("fcntl");
    *(void **)(&libc.open) = bind_symbol("open");
    *(void **)(&libc.open64) = bind_symbol("open64");
    *(void **)(&libc.openat) = bind_symbol("openat");
    *(void **)(&libc.openat64) = bind_symbol("openat64");
}

#define BOXER_DEFINE_LIBC(ret, name, params, args)                                              \
    ret libc_##name params                                                                      \
    {                                                                                           \
        pthread_once(&bind_once, bind_all);                                                     \
        if (libc.name == NULL) {                                                                \
            errno = ENOSYS;                                                                     \
            return (ret)0 - 1;                                                                  \
        }                                                                                       \
        return libc.name args;                                                                  \
    }
/* freeaddrinfo returns void and a pointer-returning function returns NULL: both special. */
#define BOXER_DEFINE_LIBC_PTR(ret, name, params, args)                                          \
    ret libc_##name params                                                                      \
    {                                                                                           \
        pthread_once(&bind_once, bind_all);                                                     \
        if (libc.name == NULL) {                                                                \
            errno = ENOSYS;                                                                     \
            return NULL;                                                                        \
        }                                                                                       \
        return libc.name args;                                                                  \
    }
#define BOXER_PICK(ret, name, params, args) BOXER_PICK_##name(ret, name, params, args)

#define BOXER_PICK_socket BOXER_DEFINE_LIBC
#define BOXER_PICK_bind BOXER_DEFINE_LIBC
#define BOXER_PICK_listen BOXER_DEFINE_LIBC
#define BOXER_PICK_accept BOXER_DEFINE_LIBC
#define BOXER_PICK_accept4 BOXER_DEFINE_LIBC
#define BOXER_PICK_connect BOXER_DEFINE_LIBC
#define BOXER_PICK_close BOXER_DEFINE_LIBC
#define BOXER_PICK_close_range BOXER_DEFINE_LIBC
#define BOXER_PICK_dup BOXER_DEFINE_LIBC
#define BOXER_PICK_dup2 BOXER_DEFINE_LIBC
#define BOXER_PICK_dup3 BOXER_DEFINE_LIBC
#define BOXER_PICK_getsockname BOXER_DEFINE_LIBC
#define BOXER_PICK_getpeername BOXER_DEFINE_LIBC
#define BOXER_PICK_getsockopt BOXER_DEFINE_LIBC
#define BOXER_PICK_setsockopt BOXER_DEFINE_LIBC
#define BOXER_PICK_recvmsg BOXER_DEFINE_LIBC
#define BOXER_PICK_epoll_ctl BOXER_DEFINE_LIBC
#define BOXER_PICK_getaddrinfo BOXER_DEFINE_LIBC
#define BOXER_PICK_getnameinfo BOXER_DEFINE_LIBC
#define BOXER_PICK_gethostbyname BOXER_DEFINE_LIBC_PTR
#define BOXER_PICK_gethostbyname2 BOXER_DEFINE_LIBC_PTR
#define BOXER_PICK_gethostbyname_r BOXER_DEFINE_LIBC
#define BOXER_PICK_gethostbyname2_r BOXER_DEFINE_LIBC
#define BOXER_PICK_gethostbyaddr BOXER_DEFINE_LIBC_PTR
#define BOXER_PICK_gethostbyaddr_r BOXER_DEFINE_LIBC
#define BOXER_PICK_fopen BOXER_DEFINE_LIBC_PTR
#define BOXER_PICK_fopen64 BOXER_DEFINE_LIBC_PTR
#define BOXER_PICK_gethostname BOXER_DEFINE_LIBC
#define BOXER_PICK_uname BOXER_DEFINE_LIBC
#define BOXER_PICK_execve BOXER_DEFINE_LIBC
#define BOXER_PICK_execvpe BOXER_DEFINE_LIBC
#define BOXER_PICK_fexecve BOXER_DEFINE_LIBC
#define BOXER_PICK_execveat BOXER_DEFINE_LIBC
#define BOXER_PICK_posix_spawn BOXER_DEFINE_LIBC
#define BOXER_PICK_posix_spawnp BOXER_DEFINE_LIBC
#define BOXER_PICK_freeaddrinfo(ret, name, params, args)                                        \
    void libc_freeaddrinfo params                                                               \
    {                                                                                           \
        pthread_once(&bind_once, bind_all);                                                     \
        if (libc.freeaddrinfo != NULL)                                                          \
            libc.freeaddrinfo args;                                                             \
    }

BOXER_LIBC_SYMBOLS(BOXER_PICK)

int libc_fcntl(int fd, int cmd, void *arg)
{
    pthread_once(&bind_once, bind_all);
    if (libc.fcntl == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return libc.fcntl(fd, cmd, arg);
}

#define BOXER_DEFINE_OPEN(name, params, args)                                                   \
    int libc_##name params                                                                      \
    {                                                                                           \
        pthread_once(&bind_once, bind_all);                                                     \
        if (libc.name == NULL) {                                                                \
            errno = ENOSYS;                                                                     \
            return -1;                                                                          \
        }                                                                                       \
        return libc.name args;                                                                  \
    }
BOXER_DEFINE_OPEN(open, (const char *path, int flags, mode_t mode), (path, flags, mode))
BOXER_DEFINE_OPEN(open64, (const char *path, int flags, mode_t mode), (path, flags, mode))
BOXER_DEFINE_OPEN(openat, (int dirfd, const char *path, int flags, mode_t mode),
                  (dirfd, path, flags, mode))
BOXER_DEFINE_OPEN(openat64, (int dirfd, const char *path, int flags, mode_t mode),
                  (dirfd, path, flags, mode))

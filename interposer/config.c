/* The environment (read once, lazily) and the logging macro's back end.
 * Every variable is documented in interposer/README.md. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "boxer_internal.h"

static struct boxer_config config;
static pthread_once_t config_once = PTHREAD_ONCE_INIT;

/* The process whose memory our state lives in. A child that shares that memory (vfork,
 * posix_spawn, clone(CLONE_VM)) has another pid but sees this value unchanged: it must leave
 * our state alone. fork() children run the atfork handler below and become owners of their copy.
 * Read with a raw syscall: a libc that caches the pid could show a vfork child the parent's. */
static pid_t owner_pid;

static pid_t raw_getpid(void) { return (pid_t)syscall(SYS_getpid); }
static void owner_child(void) { __atomic_store_n(&owner_pid, raw_getpid(), __ATOMIC_RELAXED); }

#define DEFAULT_PREFIX "100.64.0.0/10"
#define DEFAULT_WAKE "127.0.0.2"

static enum boxer_log_level parse_level(const char *text)
{
    if (text == NULL || *text == '\0')
        return BOXER_LOG_WARN;
    if (strcasecmp(text, "error") == 0)
        return BOXER_LOG_ERROR;
    if (strcasecmp(text, "warn") == 0 || strcasecmp(text, "warning") == 0)
        return BOXER_LOG_WARN;
    if (strcasecmp(text, "info") == 0)
        return BOXER_LOG_INFO;
    if (strcasecmp(text, "debug") == 0)
        return BOXER_LOG_DEBUG;
    config.log_level = BOXER_LOG_WARN;
    BOXER_LOG(ERROR, "BOXER_LOG='%s' is not one of error|warn|info|debug; using warn", text);
    return BOXER_LOG_WARN;
}

/* "a.b.c.d/len" -> network and mask (host order). */
static bool parse_cidr(const char *text, uint32_t *net, uint32_t *mask)
{
    char buf[32];
    const char *slash = strchr(text, '/');
    if (slash == NULL || (size_t)(slash - text) >= sizeof buf)
        return false;
    memcpy(buf, text, (size_t)(slash - text));
    buf[slash - text] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1)
        return false;
    char *end;
    errno = 0;
    long len = strtol(slash + 1, &end, 10);
    if (errno != 0 || end == slash + 1 || *end != '\0' || len < 0 || len > 32)
        return false;
    *mask = len == 0 ? 0 : ~(uint32_t)0 << (32 - len);
    *net = ntohl(a.s_addr) & *mask;
    return true;
}

/* What an exec'd program inherits from us (exec.c adds what its envp lacks). */
static const char *const env_names[BOXER_ENV_VARS] = {
    "BOXER_AGENT_SOCK", "BOXER_NAME",        "BOXER_ADDR", "BOXER_PREFIX",          "BOXER_WAKE_ADDR",
    "BOXER_RESOLV_CONF", "BOXER_NAME_TTL_MS", "BOXER_LOG", "BOXER_ALLOW_UNWRAPPED",
};

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (s != NULL) {
        memcpy(s, a, la);
        s[la] = '=';
        memcpy(s + la + 1, b, lb + 1);
    }
    return s;
}

/* Copies, not pointers into environ: the app may setenv/unsetenv before it execs. */
static void load_exec_env(void)
{
    if (!config.enabled)
        return;
    Dl_info info;
    if (dladdr((void *)boxer_config, &info) != 0 && info.dli_fname != NULL && info.dli_fname[0] == '/') {
        config.library = strdup(info.dli_fname);
        if (config.library != NULL)
            config.ld_preload_entry = join("LD_PRELOAD", config.library);
    }
    for (int i = 0; i < BOXER_ENV_VARS; i++) {
        const char *v = getenv(env_names[i]);
        if (v != NULL)
            config.env[i] = join(env_names[i], v);
    }
    const char *allow = getenv("BOXER_ALLOW_UNWRAPPED");
    if (allow != NULL && *allow != '\0')
        config.allow_unwrapped = strdup(allow);
}

static void load(void)
{
    /* Loaded by the constructor, in the process that owns this memory (never in a vfork child:
     * the constructor ran before it could exist). The handler is registered before any other of
     * ours, so a fork child is the owner before any of our other child handlers runs. */
    owner_pid = raw_getpid();
    pthread_atfork(NULL, NULL, owner_child);
    config.log_level = parse_level(getenv("BOXER_LOG"));

    const char *sock = getenv("BOXER_AGENT_SOCK");
    if (sock != NULL && *sock != '\0') {
        if (strlen(sock) >= sizeof config.agent_sock) {
            BOXER_LOG(ERROR, "BOXER_AGENT_SOCK is longer than %zu bytes; interposer disabled",
                      sizeof config.agent_sock - 1);
        } else {
            strcpy(config.agent_sock, sock);
            config.enabled = true;
        }
    }

    const char *resolv = getenv("BOXER_RESOLV_CONF");
    if (resolv != NULL && *resolv == '/')
        config.resolv_conf = resolv;
    else if (resolv != NULL && *resolv != '\0')
        BOXER_LOG(ERROR, "BOXER_RESOLV_CONF='%s' is not an absolute path; ignored", resolv);

    const char *name = getenv("BOXER_NAME");
    if (name != NULL && *name != '\0')
        config.name = name; /* environ outlives us; no copy needed */

    const char *addr = getenv("BOXER_ADDR");
    if (addr != NULL && *addr != '\0') {
        if (inet_pton(AF_INET, addr, &config.addr) == 1)
            config.have_addr = true;
        else
            BOXER_LOG(ERROR, "BOXER_ADDR='%s' is not an IPv4 address; ignoring it", addr);
    }

    const char *prefix = getenv("BOXER_PREFIX");
    if (prefix == NULL || *prefix == '\0')
        prefix = DEFAULT_PREFIX;
    if (!parse_cidr(prefix, &config.prefix_net, &config.prefix_mask)) {
        BOXER_LOG(ERROR, "BOXER_PREFIX='%s' is not an IPv4 CIDR (a.b.c.d/n); using %s", prefix,
                  DEFAULT_PREFIX);
        parse_cidr(DEFAULT_PREFIX, &config.prefix_net, &config.prefix_mask);
    }

    const char *wake = getenv("BOXER_WAKE_ADDR");
    if (wake == NULL || *wake == '\0')
        wake = DEFAULT_WAKE;
    if (inet_pton(AF_INET, wake, &config.wake) != 1) {
        BOXER_LOG(ERROR, "BOXER_WAKE_ADDR='%s' is not an IPv4 address; using %s", wake,
                  DEFAULT_WAKE);
        inet_pton(AF_INET, DEFAULT_WAKE, &config.wake);
    }

    if (config.enabled && !config.have_addr)
        BOXER_LOG(INFO, "BOXER_ADDR is not set: binds to the overlay address will fail");
    load_exec_env();
}

const struct boxer_config *boxer_config(void)
{
    pthread_once(&config_once, load);
    return &config;
}

bool boxer_enabled(void)
{
    return boxer_config()->enabled && !boxer_in_vm_child();
}

bool boxer_in_vm_child(void)
{
    return raw_getpid() != __atomic_load_n(&owner_pid, __ATOMIC_RELAXED);
}

bool boxer_in_overlay(struct in_addr a)
{
    const struct boxer_config *c = boxer_config();
    return (ntohl(a.s_addr) & c->prefix_mask) == c->prefix_net;
}

void boxer_log_impl(enum boxer_log_level level, const char *func, const char *fmt, ...)
{
    /* While the config loads (inside pthread_once) we must not call boxer_config() again:
     * config.log_level is already set first thing in load(). */
    if (level > config.log_level)
        return;
    int saved = errno;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "boxer-preload[%d] %s: ", (int)getpid(), func);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof buf - 1) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(STDERR_FILENO, buf, (size_t)n);
    errno = saved;
}

void boxer_die(const char *what, int err)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "boxer-preload[%d] BUG: %s: %s; aborting\n", (int)raw_getpid(),
                     what, strerror(err));
    if (n > 0)
        (void)!write(STDERR_FILENO, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    abort();
}

void boxer_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    int rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0)
        boxer_die("pthread_mutex_init", rc);
}

void boxer_mutex_lock(pthread_mutex_t *m, const char *what)
{
    int rc = pthread_mutex_lock(m);
    if (rc != 0)
        boxer_die(what, rc);
}

void boxer_mutex_unlock(pthread_mutex_t *m, const char *what)
{
    int rc = pthread_mutex_unlock(m);
    if (rc != 0)
        boxer_die(what, rc);
}

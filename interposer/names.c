/* The name calls: getaddrinfo/freeaddrinfo, gethostbyname{,2}{,_r}, getnameinfo,
 * gethostbyaddr, gethostname, uname.
 *
 * Overlay names are answered by the agent (RESOLVE/REVERSE); everything it does not claim
 * (Resolution PASS) goes to libc untouched, so DNS, /etc/hosts and numeric addresses behave as
 * without us. Results we build follow glibc's shape and semantics as closely as is sensible. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "boxer_internal.h"

#define LOOKUP_ERROR (-1) /* the agent could not be asked */

/* Names that are addresses never reach the agent: libc parses them. ':' cannot occur in a host
 * name and catches every IPv6 form (scope ids included); inet_aton takes "127.1" like libc. */
static bool is_numeric(const char *node)
{
    struct in_addr a;
    return strchr(node, ':') != NULL || inet_aton(node, &a) != 0;
}

/* A short-lived answer cache, like a resolver's TTL: apps that look the same name up before
 * every connect (most clients) would otherwise pay an agent round trip each time, on the path
 * of every new connection. Per thread, so it needs no lock and survives fork() consistently.
 * BOXER_NAME_TTL_MS (default 1000; 0 disables) bounds how stale an answer may be. */
#define NAME_CACHE_SLOTS 8
struct cached_name {
    char name[BOXER_NAME_MAX];
    char canon[BOXER_NAME_MAX];
    struct in_addr addr;
    int resolution;
    struct timespec at;
};
static __thread struct cached_name name_cache[NAME_CACHE_SLOTS];
static __thread unsigned name_cache_next;

static long name_ttl_ms(void)
{
    static long ttl = -1;
    if (ttl < 0) {
        const char *env = getenv("BOXER_NAME_TTL_MS");
        ttl = env && *env ? strtol(env, NULL, 10) : 1000;
    }
    return ttl;
}

static long ms_since(const struct timespec *then)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - then->tv_sec) * 1000 + (now.tv_nsec - then->tv_nsec) / 1000000;
}

static struct cached_name *cache_find(const char *name)
{
    for (unsigned i = 0; i < NAME_CACHE_SLOTS; i++) {
        struct cached_name *c = &name_cache[i];
        if (c->name[0] && strcmp(c->name, name) == 0)
            return ms_since(&c->at) < name_ttl_ms() ? c : NULL;
    }
    return NULL;
}

static void cache_store(const char *name, int resolution, struct in_addr addr, const char *canon)
{
    if (name_ttl_ms() <= 0)
        return;
    struct cached_name *c = &name_cache[name_cache_next++ % NAME_CACHE_SLOTS];
    strcpy(c->name, name);
    strcpy(c->canon, resolution == BOXER_RES_FOUND ? canon : "");
    c->addr = addr;
    c->resolution = resolution;
    clock_gettime(CLOCK_MONOTONIC, &c->at);
}

static int lookup_agent(const char *name, struct in_addr *addr, char canon[BOXER_NAME_MAX]);

/* RESOLVE: returns a BOXER_RES_* value or LOOKUP_ERROR; FOUND fills *addr and canon. */
static int lookup(const char *name, struct in_addr *addr, char canon[BOXER_NAME_MAX])
{
    size_t len = strlen(name);
    if (len == 0 || len >= BOXER_NAME_MAX)
        return BOXER_RES_PASS; /* cannot be ours: the protocol carries at most 255 bytes */
    struct cached_name *hit = cache_find(name);
    if (hit) {
        if (hit->resolution == BOXER_RES_FOUND) {
            *addr = hit->addr;
            strcpy(canon, hit->canon);
        }
        return hit->resolution;
    }
    int resolution = lookup_agent(name, addr, canon);
    if (resolution != LOOKUP_ERROR) {
        struct in_addr none = {0};
        cache_store(name, resolution, resolution == BOXER_RES_FOUND ? *addr : none, canon);
    }
    return resolution;
}

static int lookup_agent(const char *name, struct in_addr *addr, char canon[BOXER_NAME_MAX])
{
    size_t len = strlen(name);
    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_RESOLVE);
    memcpy(req.name, name, len + 1);
    if (boxer_agent_call(&req, &reply, NULL) < 0)
        return LOOKUP_ERROR;
    if (reply.status != 0 || reply.flags > BOXER_RES_NONAME) {
        BOXER_LOG(WARN, "RESOLVE %s: bad answer (status %u, flags %u)", name, reply.status,
                  reply.flags);
        return LOOKUP_ERROR;
    }
    if (reply.flags == BOXER_RES_FOUND) {
        memcpy(addr, reply.addr, 4);
        reply.name[BOXER_NAME_MAX - 1] = '\0';
        strcpy(canon, reply.name[0] ? reply.name : name);
    }
    BOXER_LOG(DEBUG, "RESOLVE %s -> %u", name, reply.flags);
    return (int)reply.flags;
}

/* REVERSE: returns a BOXER_RES_* value or LOOKUP_ERROR; FOUND fills name. */
static int reverse(struct in_addr addr, char name[BOXER_NAME_MAX])
{
    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_REVERSE);
    memcpy(req.addr, &addr, 4);
    if (boxer_agent_call(&req, &reply, NULL) < 0)
        return LOOKUP_ERROR;
    if (reply.status != 0 || reply.flags > BOXER_RES_NONAME ||
        (reply.flags == BOXER_RES_FOUND && reply.name[0] == '\0')) {
        BOXER_LOG(WARN, "REVERSE %s: bad answer (status %u, flags %u)", inet_ntoa(addr),
                  reply.status, reply.flags);
        return LOOKUP_ERROR;
    }
    if (reply.flags == BOXER_RES_FOUND) {
        reply.name[BOXER_NAME_MAX - 1] = '\0';
        strcpy(name, reply.name);
    }
    return (int)reply.flags;
}

static void v4_mapped(struct in6_addr *out, struct in_addr a)
{
    memset(out, 0, sizeof *out);
    out->s6_addr[10] = out->s6_addr[11] = 0xff;
    memcpy(&out->s6_addr[12], &a, 4);
}

/* ---- getaddrinfo ------------------------------------------------------------------------- */

/* The socket types glibc lists when the hints leave them open, in glibc's order. */
static const struct {
    int socktype, protocol;
    const char *proto_name; /* for service names; NULL: takes no service (raw) */
} socktypes[] = {
    {SOCK_STREAM, IPPROTO_TCP, "tcp"},
    {SOCK_DGRAM, IPPROTO_UDP, "udp"},
    {SOCK_RAW, 0, NULL},
};
#define NSOCKTYPES (sizeof socktypes / sizeof socktypes[0])

static void free_ours(struct addrinfo *ai)
{
    while (ai != NULL) {
        struct addrinfo *next = ai->ai_next;
        free(ai->ai_canonname);
        free(ai); /* the sockaddr lives in the same block */
        ai = next;
    }
}

/* Port (host order) for service on socktypes[i]; -1 if this entry has no such service. */
static int service_port(const char *service, size_t i, bool numeric_only, int *err)
{
    if (service == NULL)
        return 0;
    char *end;
    errno = 0;
    unsigned long n = strtoul(service, &end, 10);
    if (*service != '\0' && *end == '\0' && errno == 0) {
        if (n > 65535) {
            *err = EAI_SERVICE;
            return -1;
        }
        return (int)n; /* glibc gives raw entries the port, too */
    }
    if (numeric_only) {
        *err = EAI_NONAME;
        return -1;
    }
    if (socktypes[i].proto_name == NULL)
        return -1;
    struct servent se, *found = NULL;
    char buf[1024];
    if (getservbyname_r(service, socktypes[i].proto_name, &se, buf, sizeof buf, &found) != 0 ||
        found == NULL)
        return -1;
    return ntohs((uint16_t)found->s_port);
}

static int build_addrinfo(const char *service, const struct addrinfo *hints, struct in_addr addr,
                          const char *canon, struct addrinfo **res)
{
    /* glibc's defaults when hints is NULL. */
    int flags = hints ? hints->ai_flags : (AI_V4MAPPED | AI_ADDRCONFIG);
    int family = hints ? hints->ai_family : AF_UNSPEC;
    int socktype = hints ? hints->ai_socktype : 0;
    int protocol = hints ? hints->ai_protocol : 0;

    int out_family = AF_INET;
    if (family == AF_INET6) {
        if (!(flags & AI_V4MAPPED))
            return EAI_NONAME; /* the name has only an IPv4 address */
        out_family = AF_INET6;
    }
    if (socktype != 0 && socktype != SOCK_STREAM && socktype != SOCK_DGRAM && socktype != SOCK_RAW)
        return EAI_SOCKTYPE;
    if (socktype == SOCK_RAW && service != NULL)
        return EAI_SERVICE; /* raw sockets have no services */

    struct addrinfo *head = NULL, **tail = &head;
    int err = 0;
    bool any_type = false;
    for (size_t i = 0; i < NSOCKTYPES; i++) {
        if (socktype != 0 && socktype != socktypes[i].socktype)
            continue;
        /* A protocol in the hints selects its socket type; raw only when asked for. */
        if (protocol != 0 && socktypes[i].protocol != protocol &&
            !(socktypes[i].socktype == SOCK_RAW && socktype == SOCK_RAW))
            continue;
        any_type = true;
        int port = service_port(service, i, flags & AI_NUMERICSERV, &err);
        if (err != 0)
            break;
        if (port < 0)
            continue;
        size_t salen = out_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
        struct addrinfo *ai = calloc(1, sizeof *ai + salen);
        if (ai == NULL) {
            err = EAI_MEMORY;
            break;
        }
        ai->ai_family = out_family;
        ai->ai_socktype = socktypes[i].socktype;
        /* SOCK_RAW: glibc reports the protocol asked for (0 by default). */
        ai->ai_protocol = socktypes[i].protocol ? socktypes[i].protocol : protocol;
        ai->ai_addrlen = (socklen_t)salen;
        ai->ai_addr = (struct sockaddr *)(ai + 1);
        if (out_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ai->ai_addr;
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons((uint16_t)port);
            v4_mapped(&in6->sin6_addr, addr);
        } else {
            struct sockaddr_in *in = (struct sockaddr_in *)ai->ai_addr;
            in->sin_family = AF_INET;
            in->sin_port = htons((uint16_t)port);
            in->sin_addr = addr;
        }
        *tail = ai;
        tail = &ai->ai_next;
    }
    if (err == 0 && !any_type)
        err = EAI_SOCKTYPE; /* the protocol does not fit the socket type */
    if (err == 0 && head == NULL)
        err = EAI_SERVICE; /* the service exists for none of the socket types */
    if (err == 0 && (flags & AI_CANONNAME)) {
        head->ai_canonname = strdup(canon);
        if (head->ai_canonname == NULL)
            err = EAI_MEMORY;
    }
    if (err == 0 && !boxer_ai_register(head))
        err = EAI_MEMORY;
    if (err != 0) {
        free_ours(head);
        return err;
    }
    *res = head;
    return 0;
}

static int boxer_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                             struct addrinfo **res)
{
    int family = hints ? hints->ai_family : AF_UNSPEC;
    if (!boxer_enabled() || node == NULL || res == NULL || is_numeric(node) ||
        (hints && (hints->ai_flags & AI_NUMERICHOST)) ||
        (family != AF_UNSPEC && family != AF_INET && family != AF_INET6))
        return libc_getaddrinfo(node, service, hints, res); /* libc's own errors, too */

    struct in_addr addr;
    char canon[BOXER_NAME_MAX];
    switch (lookup(node, &addr, canon)) {
    case BOXER_RES_PASS:
        return libc_getaddrinfo(node, service, hints, res);
    case BOXER_RES_NONAME:
        return EAI_NONAME;
    case BOXER_RES_FOUND:
        return build_addrinfo(service, hints, addr, canon, res);
    default:
        return EAI_AGAIN; /* we cannot tell whether the name is ours: a temporary failure */
    }
}

static void boxer_freeaddrinfo(struct addrinfo *ai)
{
    /* Lists we built were never enabled-less: without the agent all came from libc. */
    if (ai != NULL && boxer_enabled() && boxer_ai_unregister(ai))
        free_ours(ai);
    else
        libc_freeaddrinfo(ai);
}

/* ---- hostent ------------------------------------------------------------------------------ */

/* Lays out a one-address hostent in buf (glibc style: everything points into buf). */
static int fill_hostent(struct hostent *h, char *buf, size_t buflen, const char *name, int af,
                        struct in_addr addr)
{
    size_t alen = af == AF_INET6 ? 16 : 4;
    size_t align = sizeof(char *);
    size_t pad = (align - (uintptr_t)buf % align) % align;
    size_t need = pad + 3 * sizeof(char *) + alen + strlen(name) + 1;
    if (buflen < need)
        return ERANGE;
    char **ptrs = (char **)(buf + pad); /* [0] = NULL (aliases), [1] = addr, [2] = NULL */
    char *abuf = (char *)(ptrs + 3);
    char *nbuf = abuf + alen;
    if (af == AF_INET6)
        v4_mapped((struct in6_addr *)(void *)abuf, addr);
    else
        memcpy(abuf, &addr, 4);
    strcpy(nbuf, name);
    ptrs[0] = NULL;
    ptrs[1] = abuf;
    ptrs[2] = NULL;
    h->h_name = nbuf;
    h->h_aliases = &ptrs[0];
    h->h_addrtype = af;
    h->h_length = (int)alen;
    h->h_addr_list = &ptrs[1];
    return 0;
}

/* Storage for the non-reentrant calls: per thread, like glibc's is per process but safer. */
static __thread struct {
    struct hostent h;
    char buf[BOXER_NAME_MAX + 64];
} tls_host;

/* The common core of the gethostbyname family for overlay names. Returns BOXER_RES_PASS when
 * libc must answer; otherwise the _r-style result: 0 with *result set or NULL + *herr. */
static int host_lookup(const char *name, int af, struct hostent *ret, char *buf, size_t buflen,
                       struct hostent **result, int *herr, bool *pass)
{
    *pass = false;
    *result = NULL;
    if (!boxer_enabled() || name == NULL || is_numeric(name) || (af != AF_INET && af != AF_INET6)) {
        *pass = true;
        return 0;
    }
    struct in_addr addr;
    char canon[BOXER_NAME_MAX];
    switch (lookup(name, &addr, canon)) {
    case BOXER_RES_PASS:
        *pass = true;
        return 0;
    case BOXER_RES_NONAME:
        *herr = HOST_NOT_FOUND;
        return 0;
    case BOXER_RES_FOUND:
        break;
    default:
        *herr = TRY_AGAIN;
        return EAGAIN;
    }
    if (af == AF_INET6) {
        *herr = NO_DATA; /* the name exists, with an IPv4 address only (like an A-only name) */
        return 0;
    }
    int rc = fill_hostent(ret, buf, buflen, canon, AF_INET, addr);
    if (rc != 0) {
        *herr = NETDB_INTERNAL;
        return rc;
    }
    *result = ret;
    *herr = NETDB_SUCCESS;
    return 0;
}

static struct hostent *host_static(const char *name, int af, bool *pass)
{
    struct hostent *result;
    int herr = 0;
    host_lookup(name, af, &tls_host.h, tls_host.buf, sizeof tls_host.buf, &result, &herr, pass);
    if (!*pass && result == NULL)
        h_errno = herr;
    return result;
}

BOXER_EXPORT struct hostent *gethostbyname(const char *name)
{
    bool pass;
    struct hostent *h = host_static(name, AF_INET, &pass);
    return pass ? libc_gethostbyname(name) : h;
}

BOXER_EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
    bool pass;
    struct hostent *h = host_static(name, af, &pass);
    return pass ? libc_gethostbyname2(name, af) : h;
}

BOXER_EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                                 struct hostent **result, int *h_errnop)
{
    bool pass;
    int herr = 0;
    int rc = host_lookup(name, AF_INET, ret, buf, buflen, result, &herr, &pass);
    if (pass)
        return libc_gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
    if (h_errnop != NULL)
        *h_errnop = herr;
    if (*result == NULL)
        h_errno = herr; /* glibc's NSS sets it too, and CPython reads it, not *h_errnop */
    return rc;
}

BOXER_EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf,
                                  size_t buflen, struct hostent **result, int *h_errnop)
{
    bool pass;
    int herr = 0;
    int rc = host_lookup(name, af, ret, buf, buflen, result, &herr, &pass);
    if (pass)
        return libc_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
    if (h_errnop != NULL)
        *h_errnop = herr;
    if (*result == NULL)
        h_errno = herr; /* glibc's NSS sets it too, and CPython reads it, not *h_errnop */
    return rc;
}

/* The common core of gethostbyaddr(_r) for overlay addresses, like host_lookup. */
static int addr_lookup(const void *addr, socklen_t len, int type, struct hostent *ret, char *buf,
                       size_t buflen, struct hostent **result, int *herr, bool *pass)
{
    struct in_addr a;
    *pass = true;
    *result = NULL;
    if (!boxer_enabled() || addr == NULL)
        return 0;
    if (type == AF_INET && len == 4)
        memcpy(&a, addr, 4);
    else if (type == AF_INET6 && len == 16 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr))
        memcpy(&a, (const char *)addr + 12, 4);
    else
        return 0;
    if (!boxer_in_overlay(a))
        return 0;
    char name[BOXER_NAME_MAX];
    switch (reverse(a, name)) {
    case BOXER_RES_PASS:
        return 0;
    case BOXER_RES_FOUND:
        *pass = false;
        if (fill_hostent(ret, buf, buflen, name, type, a) != 0) {
            *herr = NETDB_INTERNAL;
            return ERANGE;
        }
        *result = ret;
        *herr = NETDB_SUCCESS;
        return 0;
    case BOXER_RES_NONAME:
        *pass = false;
        *herr = HOST_NOT_FOUND;
        return 0;
    default:
        *pass = false;
        *herr = TRY_AGAIN;
        return EAGAIN;
    }
}

BOXER_EXPORT struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type)
{
    bool pass;
    struct hostent *result;
    int herr = 0;
    addr_lookup(addr, len, type, &tls_host.h, tls_host.buf, sizeof tls_host.buf, &result, &herr,
                &pass);
    if (pass)
        return libc_gethostbyaddr(addr, len, type);
    if (result == NULL)
        h_errno = herr;
    return result;
}

/* CPython's socket.gethostbyaddr and most threaded programs use the reentrant form. */
BOXER_EXPORT int gethostbyaddr_r(const void *addr, socklen_t len, int type, struct hostent *ret,
                                 char *buf, size_t buflen, struct hostent **result, int *h_errnop)
{
    bool pass;
    int herr = 0;
    int rc = addr_lookup(addr, len, type, ret, buf, buflen, result, &herr, &pass);
    if (pass)
        return libc_gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
    if (h_errnop != NULL)
        *h_errnop = herr;
    if (*result == NULL)
        h_errno = herr; /* glibc's NSS sets it too, and CPython reads it, not *h_errnop */
    return rc;
}

/* ---- getnameinfo ------------------------------------------------------------------------- */

static int boxer_getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host,
                             socklen_t hostlen, char *serv, socklen_t servlen, int flags)
{
    struct sockaddr_in v4;
    if (!boxer_enabled() || host == NULL || hostlen == 0 || (flags & NI_NUMERICHOST) ||
        !boxer_sockaddr_v4(sa, salen, &v4) || !boxer_in_overlay(v4.sin_addr))
        return libc_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);

    char name[BOXER_NAME_MAX];
    int rc;
    switch (reverse(v4.sin_addr, name)) {
    case BOXER_RES_PASS:
        return libc_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
    case BOXER_RES_FOUND:
        if (flags & NI_NOFQDN) {
            char *dot = strchr(name, '.');
            if (dot != NULL)
                *dot = '\0';
        }
        if (strlen(name) >= hostlen)
            return EAI_OVERFLOW;
        strcpy(host, name);
        break;
    case BOXER_RES_NONAME:
        if (flags & NI_NAMEREQD)
            return EAI_NONAME;
        rc = libc_getnameinfo(sa, salen, host, hostlen, NULL, 0, flags | NI_NUMERICHOST);
        if (rc != 0)
            return rc;
        break;
    default:
        if (flags & NI_NAMEREQD)
            return EAI_AGAIN;
        rc = libc_getnameinfo(sa, salen, host, hostlen, NULL, 0, flags | NI_NUMERICHOST);
        if (rc != 0)
            return rc;
        break;
    }
    if (serv != NULL && servlen > 0)
        return libc_getnameinfo(sa, salen, NULL, 0, serv, servlen, flags);
    return 0;
}

/* ---- host name ----------------------------------------------------------------------------- */

static int boxer_gethostname(char *name, size_t len)
{
    const struct boxer_config *c = boxer_config();
    if (!c->enabled || c->name == NULL)
        return libc_gethostname(name, len);
    /* glibc: copy what fits (not NUL-terminated if truncated) and fail with ENAMETOOLONG. */
    size_t need = strlen(c->name) + 1;
    if (need > len) {
        memcpy(name, c->name, len);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(name, c->name, need);
    return 0;
}

static int boxer_uname(struct utsname *buf)
{
    int rc = libc_uname(buf);
    const struct boxer_config *c = boxer_config();
    if (rc == 0 && c->enabled && c->name != NULL) {
        strncpy(buf->nodename, c->name, sizeof buf->nodename - 1);
        buf->nodename[sizeof buf->nodename - 1] = '\0';
    }
    return rc;
}

/* ---- exported symbols ------------------------------------------------------------------- */

BOXER_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                             struct addrinfo **res)
{
    return boxer_getaddrinfo(node, service, hints, res);
}
BOXER_EXPORT void freeaddrinfo(struct addrinfo *res) { boxer_freeaddrinfo(res); }
BOXER_EXPORT int getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host,
                             socklen_t hostlen, char *serv, socklen_t servlen, int flags)
{
    return boxer_getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
}
BOXER_EXPORT int gethostname(char *name, size_t len) { return boxer_gethostname(name, len); }
BOXER_EXPORT int uname(struct utsname *buf) { return boxer_uname(buf); }

/* ---- /etc/resolv.conf ------------------------------------------------------------------- */

/* Programs that send their own DNS queries (dig, nginx's resolver) read /etc/resolv.conf
 * themselves; with BOXER_RESOLV_CONF set they get the agent's file instead, which names the
 * agent's DNS responder (boxer/agent/dns.py). glibc's own resolver reads the real file through
 * internal calls that never reach us, which is right: getaddrinfo is answered above. Only the
 * exact path, opened read-only, is remapped. */
static const char *resolv_path(const char *path, int flags)
{
    const char *alt = boxer_config()->resolv_conf;
    if (alt == NULL || path == NULL || (flags & O_ACCMODE) != O_RDONLY ||
        strcmp(path, "/etc/resolv.conf") != 0)
        return path;
    BOXER_LOG(DEBUG, "/etc/resolv.conf -> %s", alt);
    return alt;
}

static const char *resolv_path_mode(const char *path, const char *mode)
{
    return mode != NULL && mode[0] == 'r' && strchr(mode, '+') == NULL ? resolv_path(path, O_RDONLY)
                                                                         : path;
}

/* The mode argument exists only with O_CREAT/O_TMPFILE; reading it otherwise is harmless on
 * the ABIs we support (a register), as for fcntl. */
#define BOXER_OPEN_MODE(flags, last)                                                           \
    mode_t mode = 0;                                                                            \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                                      \
        va_list ap;                                                                             \
        va_start(ap, last);                                                                     \
        mode = (mode_t)va_arg(ap, int);                                                         \
        va_end(ap);                                                                             \
    }

BOXER_EXPORT int open(const char *path, int flags, ...)
{
    BOXER_OPEN_MODE(flags, flags)
    return libc_open(resolv_path(path, flags), flags, mode);
}
BOXER_EXPORT int open64(const char *path, int flags, ...)
{
    BOXER_OPEN_MODE(flags, flags)
    return libc_open64(resolv_path(path, flags), flags, mode);
}
BOXER_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    BOXER_OPEN_MODE(flags, flags)
    return libc_openat(dirfd, resolv_path(path, flags), flags, mode);
}
BOXER_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    BOXER_OPEN_MODE(flags, flags)
    return libc_openat64(dirfd, resolv_path(path, flags), flags, mode);
}
BOXER_EXPORT FILE *fopen(const char *path, const char *mode)
{
    return libc_fopen(resolv_path_mode(path, mode), mode);
}
BOXER_EXPORT FILE *fopen64(const char *path, const char *mode)
{
    return libc_fopen64(resolv_path_mode(path, mode), mode);
}

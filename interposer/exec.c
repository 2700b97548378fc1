/* exec and spawn: nothing runs outside the overlay by accident, at any depth.
 *
 * `boxer run` refuses a program LD_PRELOAD cannot reach (boxer/agent/wrapcheck.py); a wrapped
 * program that execs one (`sh -c ./static-prog`) is refused the same way here: the caller gets
 * -1/EACCES (posix_spawn: EACCES), as from a kernel or LSM that will not execute the file, and
 * stderr gets boxer run's line, "boxer: refusing to run PATH: REASON". EACCES and not ENOEXEC:
 * on ENOEXEC a shell (and glibc's execvp) runs the file as a shell script.
 *
 * The target is judged as the loader will see it:
 *   - a #! script by its interpreter (up to 4 levels, as the kernel);
 *   - an ELF without PT_INTERP is static: the loader never runs, LD_PRELOAD never applies;
 *   - a Go program (a .go.buildinfo/.gopclntab/.note.go.buildid section, or a PT_NOTE "Go"
 *     build id note) makes its socket calls without libc;
 *   - a set-id exec (setuid to another uid, setgid to another gid, on a mount without nosuid)
 *     or file capabilities for a non-root user: the kernel marks it secure (AT_SECURE) and the
 *     loader ignores LD_PRELOAD;
 *   - and the interposer library itself must be readable by the caller (after a privilege drop,
 *     an unreadable library makes the loader skip it silently).
 * Anything else (not found, not ELF, unreadable) goes to libc, which gives the kernel's answer.
 *
 * The check runs in vfork and posix_spawn children too (CPython's subprocess execs from a vfork
 * child), so it allocates nothing and takes no lock: raw syscalls into stack buffers, reads of
 * the config loaded by the constructor. posix_spawn is checked in the parent, before it clones.
 *
 * The environment: the exec'd program gets LD_PRELOAD and our BOXER_* variables even if the
 * caller's envp dropped them (env -i, a sanitizing daemon, nginx's binary upgrade), and
 * BOXER_FDS describing the overlay sockets it inherits (fdtable.c). BOXER_ALLOW_UNWRAPPED (a
 * colon-separated list of globs) names programs the user runs outside the overlay on purpose:
 * those are neither checked nor given our variables.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h> /* ST_NOSUID, as statfs.f_flags reports it */
#include <sys/syscall.h>
#include <unistd.h>

#include "boxer_internal.h"

extern char **environ;

/* ---- raw syscalls: no libc state, safe in a vfork child ------------------------------------ */

static int sys_openat(int dirfd, const char *path, int flags)
{
    return (int)syscall(SYS_openat, dirfd, path, flags | O_CLOEXEC, 0);
}
static ssize_t sys_pread(int fd, void *buf, size_t n, off_t off) { return syscall(SYS_pread64, fd, buf, n, off); }
static void sys_close(int fd) { (void)syscall(SYS_close, fd); }
static int sys_fstat(int fd, struct stat *st) { return (int)syscall(SYS_fstat, fd, st); }

/* ---- the reason, built in a stack buffer --------------------------------------------------- */

struct text {
    char buf[1024];
    size_t len;
};

static void put(struct text *t, const char *s)
{
    while (*s != '\0' && t->len < sizeof t->buf - 1)
        t->buf[t->len++] = *s++;
    t->buf[t->len] = '\0';
}

static void put_uint(struct text *t, unsigned long v)
{
    char digits[24];
    int n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0 && n < (int)sizeof digits);
    char s[2] = {0, 0};
    while (n > 0) {
        s[0] = digits[--n];
        put(t, s);
    }
}

/* ---- reading the ELF file ----------------------------------------------------------------- */

static bool read_exact(int fd, void *buf, size_t n, off_t off) { return sys_pread(fd, buf, n, off) == (ssize_t)n; }

static const char *const GO_SECTIONS[] = {".go.buildinfo", ".gopclntab", ".note.go.buildid"};

static bool is_go_section(const char *name, size_t max)
{
    for (size_t i = 0; i < sizeof GO_SECTIONS / sizeof GO_SECTIONS[0]; i++) {
        size_t n = strlen(GO_SECTIONS[i]);
        if (n < max && memcmp(name, GO_SECTIONS[i], n + 1) == 0)
            return true;
    }
    return false;
}

/* A PT_NOTE segment holding the Go build id note (name "Go", type 4). */
static bool go_note(int fd, uint64_t off, uint64_t size)
{
    unsigned char buf[2048];
    size_t n = size < sizeof buf ? (size_t)size : sizeof buf;
    if (!read_exact(fd, buf, n, (off_t)off))
        return false;
    size_t pos = 0;
    while (pos + 12 <= n) {
        uint32_t namesz, descsz, type;
        memcpy(&namesz, buf + pos, 4);
        memcpy(&descsz, buf + pos + 4, 4);
        memcpy(&type, buf + pos + 8, 4);
        size_t name_at = pos + 12;
        if (namesz == 3 || namesz == 4) {
            if (name_at + 3 <= n && memcmp(buf + name_at, "Go", 3) == 0 && type == 4)
                return true;
        }
        pos = name_at + ((namesz + 3) & ~3u) + ((descsz + 3) & ~3u);
    }
    return false;
}

/* Fields of either ELF class, widened. */
struct elf {
    bool is64;
    uint64_t phoff, shoff;
    uint16_t phentsize, phnum, shentsize, shnum, shstrndx;
};

static bool read_ehdr(int fd, struct elf *e)
{
    union {
        unsigned char ident[EI_NIDENT];
        Elf64_Ehdr h64;
        Elf32_Ehdr h32;
    } u;
    if (!read_exact(fd, &u, sizeof u.h64, 0) && !read_exact(fd, &u, sizeof u.h32, 0))
        return false;
    if (memcmp(u.ident, ELFMAG, SELFMAG) != 0)
        return false;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (u.ident[EI_DATA] != ELFDATA2LSB)
        return false; /* not for this machine: the kernel says ENOEXEC */
#else
    if (u.ident[EI_DATA] != ELFDATA2MSB)
        return false;
#endif
    e->is64 = u.ident[EI_CLASS] == ELFCLASS64;
    if (e->is64) {
        *e = (struct elf){true, u.h64.e_phoff, u.h64.e_shoff, u.h64.e_phentsize, u.h64.e_phnum,
                          u.h64.e_shentsize, u.h64.e_shnum, u.h64.e_shstrndx};
    } else if (u.ident[EI_CLASS] == ELFCLASS32) {
        *e = (struct elf){false, u.h32.e_phoff, u.h32.e_shoff, u.h32.e_phentsize, u.h32.e_phnum,
                          u.h32.e_shentsize, u.h32.e_shnum, u.h32.e_shstrndx};
    } else {
        return false;
    }
    return true;
}

/* One program header: type, offset, file size. */
static bool read_phdr(int fd, const struct elf *e, unsigned i, uint32_t *type, uint64_t *off, uint64_t *size)
{
    if (e->is64) {
        Elf64_Phdr p;
        if (e->phentsize < sizeof p || !read_exact(fd, &p, sizeof p, (off_t)(e->phoff + (uint64_t)i * e->phentsize)))
            return false;
        *type = p.p_type, *off = p.p_offset, *size = p.p_filesz;
    } else {
        Elf32_Phdr p;
        if (e->phentsize < sizeof p || !read_exact(fd, &p, sizeof p, (off_t)(e->phoff + (uint64_t)i * e->phentsize)))
            return false;
        *type = p.p_type, *off = p.p_offset, *size = p.p_filesz;
    }
    return true;
}

/* One section header: name offset, file offset, size. */
static bool read_shdr(int fd, const struct elf *e, unsigned i, uint32_t *name, uint64_t *off, uint64_t *size)
{
    if (e->is64) {
        Elf64_Shdr s;
        if (e->shentsize < sizeof s || !read_exact(fd, &s, sizeof s, (off_t)(e->shoff + (uint64_t)i * e->shentsize)))
            return false;
        *name = s.sh_name, *off = s.sh_offset, *size = s.sh_size;
    } else {
        Elf32_Shdr s;
        if (e->shentsize < sizeof s || !read_exact(fd, &s, sizeof s, (off_t)(e->shoff + (uint64_t)i * e->shentsize)))
            return false;
        *name = s.sh_name, *off = s.sh_offset, *size = s.sh_size;
    }
    return true;
}

static bool has_go_section(int fd, const struct elf *e)
{
    uint32_t name;
    uint64_t str_off, str_size;
    if (e->shoff == 0 || e->shnum == 0 || e->shstrndx >= e->shnum ||
        !read_shdr(fd, e, e->shstrndx, &name, &str_off, &str_size))
        return false;
    char names[4096];
    size_t have = str_size < sizeof names ? (size_t)str_size : sizeof names;
    if (!read_exact(fd, names, have, (off_t)str_off))
        return false;
    for (unsigned i = 0; i < e->shnum && i < 4096; i++) {
        uint64_t off, size;
        if (!read_shdr(fd, e, i, &name, &off, &size) || name >= str_size)
            continue;
        char one[24];
        const char *s = names + name;
        size_t max = have - (name < have ? name : have);
        if (name + sizeof one > have) { /* beyond what we buffered: read just this name */
            size_t n = str_size - name < sizeof one ? (size_t)(str_size - name) : sizeof one;
            if (!read_exact(fd, one, n, (off_t)(str_off + name)))
                continue;
            s = one, max = n;
        }
        if (is_go_section(s, max))
            return true;
    }
    return false;
}

/* ---- the verdict ---------------------------------------------------------------------------- */

enum { MAX_INTERPRETER_DEPTH = 4 }; /* the kernel's BINPRM_MAX_RECURSION */

static bool nosuid_mount(int fd)
{
    struct statfs sf;
    return syscall(SYS_fstatfs, fd, &sf) == 0 && (sf.f_flags & ST_NOSUID);
}

/* The exec of this file would be "secure" (AT_SECURE): the loader then ignores LD_PRELOAD. */
static const char *secure_exec(int fd, const struct stat *st)
{
    uid_t uid = (uid_t)syscall(SYS_getuid);
    gid_t gid = (gid_t)syscall(SYS_getgid);
    bool setuid = (st->st_mode & S_ISUID) && st->st_uid != uid;
    bool setgid = (st->st_mode & S_ISGID) && (st->st_mode & S_IXGRP) && st->st_gid != gid;
    if ((setuid || setgid) && !nosuid_mount(fd))
        return " is setuid/setgid: the dynamic loader ignores LD_PRELOAD for it, so it would run outside "
               "the overlay. Run a copy without the setuid bit, or a non-setuid equivalent.";
    if (uid != 0 && syscall(SYS_fgetxattr, fd, "security.capability", NULL, 0) > 0)
        return " has file capabilities: the dynamic loader ignores LD_PRELOAD for it, so it would run "
               "outside the overlay. Run a copy without them (setcap -r), or as root.";
    return NULL;
}

/* The #! line's interpreter, copied into out; false if there is none. */
static bool interpreter(const char *head, size_t n, char *out, size_t cap)
{
    size_t i = 2;
    while (i < n && (head[i] == ' ' || head[i] == '\t'))
        i++;
    size_t k = 0;
    while (i < n && head[i] != ' ' && head[i] != '\t' && head[i] != '\n' && head[i] != '\0' && k < cap - 1)
        out[k++] = head[i++];
    out[k] = '\0';
    return k > 0;
}

/* false: exec of `path` (open as fd) must be refused; why says why. */
static bool judge(int fd, const char *path, int depth, struct text *why)
{
    struct stat st;
    if (sys_fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return true; /* the kernel's EACCES or ENOENT will do */
    const char *secure = secure_exec(fd, &st);
    if (secure != NULL) {
        put(why, path);
        put(why, secure);
        return false;
    }
    char head[256];
    ssize_t n = sys_pread(fd, head, sizeof head, 0);
    if (n >= 2 && head[0] == '#' && head[1] == '!') {
        char interp[PATH_MAX];
        if (depth >= MAX_INTERPRETER_DEPTH || !interpreter(head, (size_t)n, interp, sizeof interp))
            return true; /* the kernel: ELOOP / ENOEXEC */
        int ifd = sys_openat(AT_FDCWD, interp, O_RDONLY);
        if (ifd < 0)
            return true;
        bool ok = judge(ifd, interp, depth + 1, why);
        sys_close(ifd);
        return ok;
    }
    struct elf e;
    if (!read_ehdr(fd, &e))
        return true; /* not ELF: ENOEXEC from the kernel, then a shell runs it as a script */
    bool has_interp = false, go = false;
    for (unsigned i = 0; i < e.phnum && i < 256; i++) {
        uint32_t type;
        uint64_t off, size;
        if (!read_phdr(fd, &e, i, &type, &off, &size))
            break;
        if (type == PT_INTERP)
            has_interp = true;
        else if (type == PT_NOTE && !go)
            go = go_note(fd, off, size);
    }
    if (!has_interp) {
        put(why, path);
        put(why, " is statically linked: LD_PRELOAD cannot reach it, so it would run outside the overlay. "
                 "Use a dynamically linked build (most distribution packages are).");
        return false;
    }
    if (go || has_go_section(fd, &e)) {
        put(why, path);
        put(why, " is a Go program: Go makes socket calls without libc, so the interposer cannot see them. "
                 "Build it with cgo and the netgo tag off (CGO_ENABLED=1), or run a C/C++/JVM/Python "
                 "equivalent.");
        return false;
    }
    return true;
}

/* Our library must stay readable for the program to be wrapped (a privilege drop may lose it). */
static bool library_readable(struct text *why)
{
    const char *lib = boxer_config()->library;
    if (lib == NULL || syscall(SYS_faccessat, AT_FDCWD, lib, R_OK) == 0)
        return true;
    put(why, "the interposer library ");
    put(why, lib);
    put(why, " is not readable by uid ");
    put_uint(why, (unsigned long)syscall(SYS_getuid));
    put(why, ": the dynamic loader would skip it and the program would run outside the overlay. Install "
             "boxer where every user can read it (e.g. under /usr/local or /opt).");
    return false;
}

/* A shell-style glob: `*` any run of characters (also '/'), `?` one; nothing else is special. */
static bool glob_match(const char *pat, size_t plen, const char *s)
{
    size_t p = 0;
    const char *star = NULL, *resume = NULL;
    size_t star_p = 0;
    while (*s != '\0') {
        if (p < plen && (pat[p] == '?' || pat[p] == *s)) {
            p++, s++;
        } else if (p < plen && pat[p] == '*') {
            star = pat + p, star_p = ++p, resume = s;
        } else if (star != NULL) {
            p = star_p, s = ++resume;
        } else {
            return false;
        }
    }
    while (p < plen && pat[p] == '*')
        p++;
    return p == plen;
}

static bool allowed_unwrapped(const char *path)
{
    const char *list = boxer_config()->allow_unwrapped;
    if (list == NULL)
        return false;
    for (const char *p = list; *p != '\0';) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n > 0 && glob_match(p, n, path))
            return true;
        p += n + (end != NULL);
    }
    return false;
}

static void refuse_message(const char *path, const struct text *why)
{
    struct text line = {.len = 0};
    put(&line, "boxer: refusing to run ");
    put(&line, path);
    put(&line, ": ");
    put(&line, why->buf);
    put(&line, " (BOXER_ALLOW_UNWRAPPED=<glob> runs it anyway, outside the overlay)\n");
    (void)!syscall(SYS_write, STDERR_FILENO, line.buf, line.len);
}

enum verdict { RUN_WRAPPED, RUN_UNWRAPPED, REFUSE };

/* What to do with an exec of path (dirfd-relative; fd >= 0: that open file, for fexecve). */
static enum verdict verdict(int dirfd, const char *path, int fd)
{
    if (allowed_unwrapped(path))
        return RUN_UNWRAPPED;
    struct text why = {.len = 0};
    bool ok;
    if (fd >= 0) {
        ok = judge(fd, path, 0, &why);
    } else {
        int f = sys_openat(dirfd, path, O_RDONLY);
        if (f < 0)
            return RUN_WRAPPED; /* not there, or execute-only: the kernel decides */
        ok = judge(f, path, 0, &why);
        sys_close(f);
    }
    if (ok && !library_readable(&why))
        ok = false;
    if (ok)
        return RUN_WRAPPED;
    refuse_message(path, &why);
    return REFUSE;
}

/* The file execvp/posix_spawnp would run: the first executable PATH entry (glibc's search). */
static bool search_path(const char *file, char *out, size_t cap)
{
    if (strchr(file, '/') != NULL) {
        size_t n = strlen(file);
        if (n >= cap)
            return false;
        memcpy(out, file, n + 1);
        return true;
    }
    const char *path = NULL;
    for (char **e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    if (path == NULL)
        path = "/bin:/usr/bin";
    size_t flen = strlen(file);
    for (const char *p = path;;) {
        const char *end = strchr(p, ':');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n + 1 + flen < cap) {
            size_t k = 0;
            if (n == 0)
                out[k++] = '.';
            memcpy(out + k, p, n);
            k += n;
            out[k++] = '/';
            memcpy(out + k, file, flen + 1);
            struct stat st;
            if (syscall(SYS_faccessat, AT_FDCWD, out, X_OK) == 0 && syscall(SYS_newfstatat, AT_FDCWD, out, &st, 0) == 0 &&
                S_ISREG(st.st_mode))
                return true;
        }
        if (end == NULL)
            return false;
        p = end + 1;
    }
}

/* ---- the environment the program gets ---------------------------------------------------- */

static bool has_name(const char *entry, const char *name, size_t n)
{
    return strncmp(entry, name, n) == 0 && entry[n] == '=';
}

/* out: envp with our variables added where missing (LD_PRELOAD: ours first), BOXER_FDS replaced
 * by `fds` (NULL: none). out must hold count(envp) + BOXER_ENV_EXTRA entries; ld must hold
 * strlen(LD_PRELOAD entry) + strlen(library) + 2 bytes, see env_room(). */
static void fix_env(char *const envp[], const char *fds, char **out, char *ld)
{
    const struct boxer_config *c = boxer_config();
    size_t k = 0;
    bool have_ld = false;
    bool have[BOXER_ENV_VARS] = {false};
    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        if (has_name(*e, "BOXER_FDS", 9))
            continue;
        if (has_name(*e, "LD_PRELOAD", 10) && c->library != NULL) {
            have_ld = true;
            if (strstr(*e, c->library) == NULL) { /* someone replaced it: ours first again */
                size_t n = 0;
                for (const char *s = "LD_PRELOAD="; *s; s++)
                    ld[n++] = *s;
                size_t l = strlen(c->library);
                memcpy(ld + n, c->library, l);
                n += l;
                ld[n++] = ':';
                size_t rest = strlen(*e + 11);
                memcpy(ld + n, *e + 11, rest + 1);
                out[k++] = ld;
                continue;
            }
        }
        for (int i = 0; i < BOXER_ENV_VARS; i++)
            if (c->env[i] != NULL && has_name(*e, c->env[i], strcspn(c->env[i], "=")))
                have[i] = true;
        out[k++] = *e;
    }
    if (!have_ld && c->ld_preload_entry != NULL)
        out[k++] = (char *)c->ld_preload_entry;
    for (int i = 0; i < BOXER_ENV_VARS; i++)
        if (c->env[i] != NULL && !have[i])
            out[k++] = (char *)c->env[i];
    if (fds != NULL)
        out[k++] = (char *)fds;
    out[k] = NULL;
}

static size_t env_count(char *const envp[])
{
    size_t n = 0;
    while (envp != NULL && envp[n] != NULL)
        n++;
    return n;
}

static size_t ld_room(char *const envp[])
{
    const struct boxer_config *c = boxer_config();
    size_t n = 16 + (c->library != NULL ? strlen(c->library) : 0);
    for (char *const *e = envp; e != NULL && *e != NULL; e++)
        if (has_name(*e, "LD_PRELOAD", 10))
            n += strlen(*e);
    return n;
}

/* Runs `call` with envp fixed: the VLAs live in this frame, on the caller's stack (no malloc). */
#define WITH_FIXED_ENV(envp, fixed, call)                                                           \
    do {                                                                                           \
        char fds_buf[BOXER_FDS_MAX];                                                               \
        const char *fds_ = boxer_fds_env(fds_buf, sizeof fds_buf);                                 \
        char *fixed[env_count(envp) + BOXER_ENV_VARS + 3];                                         \
        char ld_[ld_room(envp)];                                                                   \
        fix_env(envp, fds_, fixed, ld_);                                                           \
        call;                                                                                      \
    } while (0)

/* ---- the wrappers ---------------------------------------------------------------------------- */

static int do_execve(const char *path, char *const argv[], char *const envp[])
{
    if (!boxer_config()->enabled)
        return libc_execve(path, argv, envp);
    enum verdict v = verdict(AT_FDCWD, path, -1);
    if (v == REFUSE) {
        errno = EACCES;
        return -1;
    }
    if (v == RUN_UNWRAPPED)
        return libc_execve(path, argv, envp);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_execve(path, argv, fixed));
    return rc;
}

static int do_execvpe(const char *file, char *const argv[], char *const envp[])
{
    char found[PATH_MAX];
    if (!boxer_config()->enabled || file == NULL || *file == '\0' || !search_path(file, found, sizeof found))
        return libc_execvpe(file, argv, envp);
    enum verdict v = verdict(AT_FDCWD, found, -1);
    if (v == REFUSE) {
        errno = EACCES;
        return -1;
    }
    if (v == RUN_UNWRAPPED)
        return libc_execvpe(file, argv, envp);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_execvpe(file, argv, fixed));
    return rc;
}

BOXER_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    return do_execve(path, argv, envp);
}
BOXER_EXPORT int execv(const char *path, char *const argv[]) { return do_execve(path, argv, environ); }
BOXER_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    return do_execvpe(file, argv, envp);
}
BOXER_EXPORT int execvp(const char *file, char *const argv[]) { return do_execvpe(file, argv, environ); }

BOXER_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    if (!boxer_config()->enabled)
        return libc_fexecve(fd, argv, envp);
    enum verdict v = verdict(AT_FDCWD, "(fexecve)", fd);
    if (v == REFUSE) {
        errno = EACCES;
        return -1;
    }
    if (v == RUN_UNWRAPPED)
        return libc_fexecve(fd, argv, envp);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_fexecve(fd, argv, fixed));
    return rc;
}

BOXER_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)
{
    if (!boxer_config()->enabled)
        return libc_execveat(dirfd, path, argv, envp, flags);
    enum verdict v = (flags & AT_EMPTY_PATH) && *path == '\0'
                         ? verdict(dirfd, "(execveat)", dirfd)
                         : verdict(dirfd, path, -1);
    if (v == REFUSE) {
        errno = EACCES;
        return -1;
    }
    if (v == RUN_UNWRAPPED)
        return libc_execveat(dirfd, path, argv, envp, flags);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_execveat(dirfd, path, argv, fixed, flags));
    return rc;
}

/* execl, execle, execlp: the argument list as an argv on our stack. */
#define ARGV_FROM_VA(arg0, ap, argv, envp_out)                                                      \
    size_t argc_ = 1;                                                                              \
    va_list count_;                                                                                \
    va_copy(count_, ap);                                                                           \
    while (va_arg(count_, char *) != NULL)                                                         \
        argc_++;                                                                                   \
    va_end(count_);                                                                                \
    char *argv[argc_ + 1];                                                                         \
    argv[0] = (char *)(arg0);                                                                      \
    for (size_t i_ = 1; i_ <= argc_; i_++)                                                         \
        argv[i_] = va_arg(ap, char *);                                                             \
    envp_out

BOXER_EXPORT int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_VA(arg, ap, argv, );
    va_end(ap);
    return do_execve(path, argv, environ);
}

BOXER_EXPORT int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_VA(arg, ap, argv, );
    va_end(ap);
    return do_execvpe(file, argv, environ);
}

BOXER_EXPORT int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    ARGV_FROM_VA(arg, ap, argv, char *const *envp = va_arg(ap, char *const *));
    va_end(ap);
    return do_execve(path, argv, envp);
}

BOXER_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                             const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    if (!boxer_config()->enabled)
        return libc_posix_spawn(pid, path, actions, attr, argv, envp);
    enum verdict v = verdict(AT_FDCWD, path, -1);
    if (v == REFUSE)
        return EACCES;
    if (v == RUN_UNWRAPPED)
        return libc_posix_spawn(pid, path, actions, attr, argv, envp);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_posix_spawn(pid, path, actions, attr, argv, fixed));
    return rc;
}

BOXER_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                              const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    char found[PATH_MAX];
    if (!boxer_config()->enabled || !search_path(file, found, sizeof found))
        return libc_posix_spawnp(pid, file, actions, attr, argv, envp);
    enum verdict v = verdict(AT_FDCWD, found, -1);
    if (v == REFUSE)
        return EACCES;
    if (v == RUN_UNWRAPPED)
        return libc_posix_spawnp(pid, file, actions, attr, argv, envp);
    int rc;
    WITH_FIXED_ENV(envp, fixed, rc = libc_posix_spawnp(pid, file, actions, attr, argv, fixed));
    return rc;
}

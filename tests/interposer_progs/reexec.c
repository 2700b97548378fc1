/* A server that re-execs, as sshd and nginx do (issue 12, item 4).
 *
 *   reexec PORT [UPGRADE_AFTER]   listen on PORT; for each connection fork a child that puts
 *                                 the socket on fds 0 and 1 and re-execs this program as
 *                                 "reexec serve" (sshd's re-exec per connection); after
 *                                 UPGRADE_AFTER connections exec itself with the listener
 *                                 inherited ("reexec inherited FD"), as nginx's binary upgrade
 *                                 and socket activation hand a listener to a new image.
 *   reexec serve                  answers "peer=IP:PORT sock=IP:PORT exec=serve\n" about fd 0.
 *   reexec inherited FD           keeps accepting on the inherited listener FD.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *fmt(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        port = ntohs(in->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        port = ntohs(in6->sin6_port);
    }
    snprintf(buf, cap, "%s:%u", ip, port);
    return buf;
}

static int serve(const char *how)
{
    struct sockaddr_storage peer, own;
    socklen_t plen = sizeof peer, olen = sizeof own;
    char a[80], b[80], line[256];
    if (getpeername(0, (struct sockaddr *)&peer, &plen) != 0 || getsockname(0, (struct sockaddr *)&own, &olen) != 0) {
        snprintf(line, sizeof line, "error=%s\n", strerror(errno));
    } else {
        snprintf(line, sizeof line, "peer=%s sock=%s exec=%s\n", fmt(&peer, a, sizeof a), fmt(&own, b, sizeof b),
                 how);
    }
    return write(1, line, strlen(line)) == (ssize_t)strlen(line) ? 0 : 1;
}

static int accept_loop(const char *self, int lfd, int upgrade_after)
{
    signal(SIGCHLD, SIG_IGN);
    for (int n = 1;; n++) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("accept");
            return 1;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            dup2(c, 0);
            dup2(c, 1);
            close(c);
            execl(self, "reexec", "serve", (char *)NULL);
            _exit(127);
        }
        close(c);
        if (n == upgrade_after) {
            char fd[16];
            snprintf(fd, sizeof fd, "%d", lfd);
            execl(self, "reexec", "inherited", fd, (char *)NULL);
            perror("exec inherited");
            return 1;
        }
    }
}

int main(int argc, char **argv)
{
    const char *self = "/proc/self/exe";
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return serve("serve");
    if (argc >= 3 && strcmp(argv[1], "inherited") == 0)
        return accept_loop(self, atoi(argv[2]), 0);
    if (argc < 2) {
        fprintf(stderr, "usage: reexec PORT [UPGRADE_AFTER] | serve | inherited FD\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0); /* no SOCK_CLOEXEC: the new image inherits it */
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0) {
        perror("bind/listen");
        return 1;
    }
    return accept_loop(self, lfd, argc >= 3 ? atoi(argv[2]) : 0);
}

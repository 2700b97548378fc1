/* Who may talk to the agent: the agent and its descendants (peercheck.c says why and how). */
#ifndef BOXER_PEERCHECK_H
#define BOXER_PEERCHECK_H

#include <stdbool.h>
#include <sys/types.h>

struct bx_peer {
    pid_t pid; /* 0 when the kernel could not name it (another pid namespace) */
    uid_t uid;
};

/* True when the process at the other end of the connected Unix socket `fd` is `root` or one of
 * its descendants. `who` is filled either way (for the agent's log). Never blocks. Not
 * thread-safe: one thread (the fast path's) makes every check. */
bool bx_peer_allowed(int fd, pid_t root, struct bx_peer *who);

/* Closes the descriptors of the processes remembered as allowed (when the fast path stops). */
void bx_peer_forget(void);

#endif

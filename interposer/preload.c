/* The constructor: the one thing we do at load time. It tells the agent that the preload is
 * active in this process (glibc silently runs a program unwrapped when LD_PRELOAD fails, so
 * the agent must see proof). Quick, and never fatal: without an agent we just log. */
#define _GNU_SOURCE
#include <string.h>

#include "boxer_internal.h"

__attribute__((constructor)) static void boxer_constructor(void)
{
    if (!boxer_enabled())
        return;
    boxer_fds_import();
    struct boxer_msg req, reply;
    boxer_msg_init(&req, BOXER_OP_HELLO);
    if (boxer_agent_call(&req, &reply, NULL) == 0 && reply.status != 0)
        BOXER_LOG(WARN, "agent answered HELLO with %s", strerror((int)reply.status));
}

/* Lets a launcher check which library it preloads (dlopen + dlsym). */
BOXER_EXPORT int boxer_preload_version(void) { return 1; }

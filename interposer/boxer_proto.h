/* The interposer <-> agent wire format. Mirrors boxer/agent/ipc.py exactly (that file is the spec;
 * test_proto_header_matches_ipc in tests/test_interposer.py checks that both agree). One fresh AF_UNIX stream connection per request:
 * one 300-byte request, one 300-byte reply (with at most one fd attached by SCM_RIGHTS). */
#ifndef BOXER_PROTO_H
#define BOXER_PROTO_H

#include <stdint.h>

#define BOXER_MAGIC 0x42580001u /* "BX", version 1 */
#define BOXER_MSG_SIZE 300
#define BOXER_NAME_MAX 256 /* bytes of the name field, NUL included */

enum boxer_op {
    BOXER_OP_HELLO = 1,    /* sent once by the constructor: the preload is active */
    BOXER_OP_RESOLVE = 2,  /* name -> overlay address; reply flags: enum boxer_resolution */
    BOXER_OP_REVERSE = 3,  /* overlay address -> name; reply flags: enum boxer_resolution */
    BOXER_OP_CONNECT = 4,  /* addr:port on the overlay; reply: fd + local overlay addr:port */
    BOXER_OP_LISTEN = 5,   /* port listens; flags 1 = bound to the overlay address, 0 = wildcard */
    BOXER_OP_UNLISTEN = 6, /* last listening fd on port closed */
    BOXER_OP_ACCEPT = 7,   /* wake connection on port with source port token; reply: fd + peer */
};

enum boxer_resolution {
    BOXER_RES_PASS = 0,   /* not ours: fall through to libc */
    BOXER_RES_FOUND = 1,  /* answer in addr (RESOLVE) or name (REVERSE) */
    BOXER_RES_NONAME = 2, /* authoritative "no such host" */
};

/* Native byte order except addr (network order, IPv4 in the first 4 bytes). */
struct boxer_msg {
    uint32_t magic;
    uint32_t op;
    uint32_t status; /* request: 0; reply: 0 or a positive errno */
    uint32_t flags;
    int32_t pid; /* request: the caller's pid; reply: 0 */
    uint16_t family; /* AF_INET for every address we carry */
    uint16_t port;   /* host byte order */
    uint32_t token;
    uint8_t addr[16];
    char name[BOXER_NAME_MAX];
} __attribute__((packed));

_Static_assert(sizeof(struct boxer_msg) == BOXER_MSG_SIZE, "boxer_msg must be 300 bytes");

#endif

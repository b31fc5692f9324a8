/*
 * fleet_msg.h -- the messages moxy nodes broadcast to each other over
 * Redis pub/sub (api/fleet.c): cache purges and shared-dict
 * invalidations, their encoding, signature and defensive parsing.
 *
 * A message is the magic "MXF1" then netstrings ("LEN:BYTES,", LEN in
 * decimal without leading zeros), in this order:
 *
 *   ts      the sender's wall clock in milliseconds (decimal)
 *   node    the sender's node id (1 to MOXY_FLEET_NODE_MAX bytes)
 *   nonce   16 hex digits, unique per message of a node
 *   kind    "purge", "purge_prefix", "dict_delete" or "dict_flush"
 *   arg1    the key, the prefix, or the dict's name
 *   arg2    the dict's key (dict_delete), else empty
 *   sig     64 hex digits: HMAC-SHA256 under the fleet's secret of every
 *           byte before this netstring; empty when the sender has no secret
 *
 * and nothing after.  Messages are at most MOXY_FLEET_MSG_MAX bytes.
 * Parsing reads only the bytes it is given and never allocates: the parsed
 * fields point into the input.
 */
#ifndef MOXY_FLEET_MSG_H
#define MOXY_FLEET_MSG_H

#include "base/moxy.h"

#define MOXY_FLEET_MSG_MAX (66 * 1024) /* bytes of one message, all of it */
#define MOXY_FLEET_ARG_MAX 65535       /* bytes of arg1 or arg2 */
#define MOXY_FLEET_NODE_MAX 128        /* bytes of a node id */
#define MOXY_FLEET_SIG_HEX 64

/* What a message asks. */
enum {
    MOXY_FLEET_PURGE = 1,        /* arg1: a cache key (every variant) */
    MOXY_FLEET_PURGE_PREFIX = 2, /* arg1: a prefix of cache keys */
    MOXY_FLEET_DICT_DELETE = 3,  /* arg1: a dict's name, arg2: its key */
    MOXY_FLEET_DICT_FLUSH = 4    /* arg1: a dict's name */
};

/* Why a message was refused (moxy_fleet_msg_parse, moxy_fleet_msg_verify). */
enum {
    MOXY_FLEET_E_MALFORMED = 1, /* not a message of this format */
    MOXY_FLEET_E_TOO_LARGE = 2, /* over MOXY_FLEET_MSG_MAX */
    MOXY_FLEET_E_SIGNATURE = 3  /* unsigned, or signed under another secret */
};

/* A parsed message: every pointer into the parsed bytes. */
typedef struct {
    long long ts_ms;               /* the sender's clock */
    moxy_str_t node, nonce;
    int kind;                      /* MOXY_FLEET_* */
    moxy_str_t arg1, arg2;
    moxy_str_t sig;                /* hex, or empty */
    size_t signed_len;             /* bytes the signature covers (from the start) */
} moxy_fleet_msg_t;

/* Write the message of kind (MOXY_FLEET_*) from node (nlen bytes), with
 * ts_ms and nonce (a number written as 16 hex digits), arg1 / arg2 (a2len
 * 0 when none), signed with secret (slen bytes; slen 0: unsigned) into buf
 * (cap bytes).  Returns its length, or -1 when it does not fit (cap, or
 * MOXY_FLEET_MSG_MAX, or an argument past its bound). */
long moxy_fleet_msg_encode(char *buf, size_t cap, long long ts_ms, const char *node, size_t nlen,
                           uint64_t nonce, int kind, const char *a1, size_t a1len, const char *a2,
                           size_t a2len, const char *secret, size_t slen);

/* Parse the len bytes at p into *m.  MOXY_OK, or MOXY_ERROR with *why set
 * (MOXY_FLEET_E_MALFORMED or _TOO_LARGE).  A message of a known kind has
 * the arguments that kind needs (non-empty arg1; arg2 only for
 * dict_delete, non-empty there). */
int moxy_fleet_msg_parse(const char *p, size_t len, moxy_fleet_msg_t *m, int *why);

/* 1 when m (parsed from p) carries a valid signature under secret (slen
 * bytes, > 0), compared in constant time; 0 otherwise. */
int moxy_fleet_msg_verify(const char *p, const moxy_fleet_msg_t *m, const char *secret, size_t slen);

/* The kind's name ("purge", ...), or "?". */
const char *moxy_fleet_kind_name(int kind);

#endif

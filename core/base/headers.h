/*
 * headers.h -- ordered header lists in a request pool, and the rules about
 * which headers are hop-by-hop.
 */
#ifndef MOXY_HEADERS_H
#define MOXY_HEADERS_H

#include "base/pool.h"

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* What moxy itself cares about in a header, found once when it is added
 * (bits of moxy_header_t.kind), so later passes test a bit instead of
 * comparing names. */
enum {
    MOXY_HK_HOP = 1 << 0,        /* always hop-by-hop (RFC 9110 7.6.1, and Proxy-*) */
    MOXY_HK_CONNECTION = 1 << 1,
    MOXY_HK_UPGRADE = 1 << 2,
    MOXY_HK_TE = 1 << 3,         /* Transfer-Encoding */
    MOXY_HK_HOST = 1 << 4,
    MOXY_HK_CL = 1 << 5,         /* Content-Length */
    MOXY_HK_EXPECT = 1 << 6,
    MOXY_HK_XRID = 1 << 7,       /* X-Request-Id */
    MOXY_HK_XFF = 1 << 8,        /* X-Forwarded-For */
    MOXY_HK_XFP = 1 << 9,        /* X-Forwarded-Proto */
    MOXY_HK_XFH = 1 << 10,       /* X-Forwarded-Host */
    MOXY_HK_FWD = 1 << 11,       /* Forwarded (RFC 7239) */
    MOXY_HK_CONDITION = 1 << 12, /* If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since */
    MOXY_HK_IF_RANGE = 1 << 13,  /* If-Range */
    MOXY_HK_RANGE = 1 << 14,     /* Range */
    MOXY_HK_NOT_TRAILER = 1 << 15, /* other fields a trailer must not carry (RFC 9110 6.5.1) */
    MOXY_HK_OWN = 1 << 16,       /* set by its adder, never by a name: a field moxy wrote itself
                                    into a response head that masking must leave (Cache-Status) */
};

/* The fields dropped from trailers (RFC 9110 6.5.1): framing, routing,
 * request modifiers, authentication, response control data, how to process
 * the content, everything hop-by-hop, and the fields moxy writes itself in
 * the head (X-Forwarded-*, Forwarded, X-Request-Id, Via): a recipient that
 * merges trailers into the head would take the sender's for moxy's. */
#define MOXY_HK_TRAILER_FORBIDDEN                                                            \
    (MOXY_HK_HOP | MOXY_HK_CONNECTION | MOXY_HK_UPGRADE | MOXY_HK_TE | MOXY_HK_HOST | MOXY_HK_CL | \
     MOXY_HK_EXPECT | MOXY_HK_CONDITION | MOXY_HK_IF_RANGE | MOXY_HK_RANGE | MOXY_HK_NOT_TRAILER |   \
     MOXY_HK_XFF | MOXY_HK_XFP | MOXY_HK_XFH | MOXY_HK_FWD | MOXY_HK_XRID)

/* One header.  Name and value live in the request pool. */
typedef struct {
    char *name;
    char *value;
    uint32_t name_len;
    uint32_t value_len;
    uint32_t kind;   /* MOXY_HK_* bits */
} moxy_header_t;

/* An ordered list of headers (order and repeats are kept, as received). */
typedef struct {
    moxy_header_t *h;
    uint32_t n;
    uint32_t cap;
} moxy_headers_t;

/* A set of field names, matched in any case (mask.headers): a field whose
 * length no name has is passed over with one bit test, and one whose
 * length some have is compared with those only. */
typedef struct {
    const char *name; /* lower case */
    uint32_t len;
    uint32_t lit;     /* 1: only a-z, 0-9 and '-' (moxy_strieq_lit compares it) */
} moxy_field_name_t;

typedef struct {
    moxy_field_name_t *names; /* by length, shortest first */
    uint32_t n;
    uint64_t lens;            /* bit MOXY_MIN(len, 63) for each name's len */
    uint16_t start[65];       /* names[start[b] .. start[b + 1]) have MOXY_MIN(len, 63) == b */
} moxy_field_set_t;

/* 1 when the field name (len bytes, any case) is in s. */
static inline int moxy_field_set_has(const moxy_field_set_t *s, const char *name, size_t len)
{
    size_t b = MOXY_MIN(len, 63);
    if (!((s->lens >> b) & 1)) return 0;
    for (uint32_t i = s->start[b]; i < s->start[b + 1]; i++) {
        const moxy_field_name_t *f = &s->names[i];
        if (f->len != len) continue; /* the bucket of 63 holds every longer length */
        if (f->lit ? moxy_strieq_lit(name, len, f->name, len) : moxy_strieq(name, len, f->name, len)) return 1;
    }
    return 0;
}

/* Append name: value (copied into pool).  MOXY_OK or MOXY_ERROR (out of memory). */
int moxy_headers_add(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                     const char *value, size_t vlen);

/* Append name: value without copying them: both must outlive hs (static,
 * or the configuration r runs on); kind's bits are added to the name's.
 * MOXY_OK or MOXY_ERROR (out of memory). */
int moxy_headers_add_ref(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                         const char *value, size_t vlen, uint32_t kind);

/* The MOXY_HK_* bits of a header name. */
uint32_t moxy_header_kind(const char *name, size_t len);

/* Index of the first header with a kind bit of mask at or after start, or -1. */
int moxy_headers_find_kind(const moxy_headers_t *hs, uint32_t mask, uint32_t start);

/* Index of the first header called name at or after start, or -1. */
int moxy_headers_find(const moxy_headers_t *hs, const char *name, size_t nlen, uint32_t start);

/* The first header called name (nlen bytes, any case) in hs, or NULL.  The
 * pointer is into hs: valid until hs changes. */
const moxy_header_t *moxy_headers_get(const moxy_headers_t *hs, const char *name, size_t nlen);

/* The MOXY_HK_* bits of all of hs's headers together. */
uint32_t moxy_headers_kinds(const moxy_headers_t *hs);

/* Remove every header called name; returns how many were removed. */
int moxy_headers_remove(moxy_headers_t *hs, const char *name, size_t nlen);

/* Remove every header whose name is in set, but those with MOXY_HK_OWN; in
 * one pass, order kept.  Returns how many were removed. */
int moxy_headers_remove_set(moxy_headers_t *hs, const moxy_field_set_t *set);

/* Remove every header with a kind bit of mask; returns how many were removed. */
int moxy_headers_remove_kind(moxy_headers_t *hs, uint32_t mask);

/* Replace every header called name by one name: value.  MOXY_OK or MOXY_ERROR. */
int moxy_headers_set(moxy_pool_t *pool, moxy_headers_t *hs, const char *name, size_t nlen,
                     const char *value, size_t vlen);

/* Fields a Connection header names are hop-by-hop too (RFC 9110 7.6.1).
 * For a list copied field by field: hs when its Connection headers name
 * fields besides close, keep-alive and upgrade (then check each field with
 * moxy_header_connection_named), else NULL: nothing to check. */
const moxy_headers_t *moxy_headers_connection_list(const moxy_headers_t *hs);

/* 1 when a Connection header of conn (moxy_headers_connection_list's, or
 * NULL) names the field name (len bytes). */
int moxy_header_connection_named(const moxy_headers_t *conn, const char *name, size_t len);

/* 1 when the bytes are a valid field name (RFC 9110 token). */
int moxy_header_name_valid(const char *p, size_t n);

/* 1 when the bytes are a valid field value (VCHAR, SP, HTAB, obs-text; no CR/LF/NUL). */
int moxy_header_value_valid(const char *p, size_t n);

/* 1 when the n bytes at p are a valid Host (RFC 9110 7.2): uri-host [ ":"
 * port ], where uri-host is a non-empty reg-name (unreserved, pct-encoded,
 * sub-delims), an IPv4 address or an IP-literal ("[" IPv6 or IPvFuture "]"),
 * and port at most 5 digits up to 65535.  No '/', '?', '#', '@', space or
 * control byte can pass. */
int moxy_host_valid(const char *p, size_t n);

/* An upper bound of the bytes moxy_headers_write writes for hs. */
size_t moxy_headers_size(const moxy_headers_t *hs);

/* Remove from hs the fields its Connection headers name (hop-by-hop, RFC
 * 9110 7.6.1), but those with a kind bit of keep; the Connection headers
 * stay.  Done when a message comes in, before moxy adds fields of its own,
 * so that a peer cannot name those away.  Returns how many were removed. */
int moxy_headers_drop_connection_named(moxy_headers_t *hs, uint32_t keep);

/* Write "Name: value\r\n" at p for each header of hs that is not hop-by-hop
 * (Upgrade kept when keep_upgrade) and has no kind bit of skip; the fields a
 * Connection header named were dropped on the way in
 * (moxy_headers_drop_connection_named).  Returns the bytes written (at most
 * moxy_headers_size(hs)). */
size_t moxy_headers_write(char *p, const moxy_headers_t *hs, int keep_upgrade, uint32_t skip);

/* Write v in decimal at p; returns the end. */
char *moxy_write_u64(char *p, uint64_t v);

/* Write v in lowercase hex at p; returns the end. */
char *moxy_write_hex(char *p, uint64_t v);

/* Write a chunk-size line ("1f40\r\n") for a chunk of len bytes to o. */
void moxy_chunk_head(struct evbuffer *o, uint64_t len);

/* Write the last chunk, the trailers (may be NULL; the fields a trailer must
 * not carry, MOXY_HK_TRAILER_FORBIDDEN, are left out) and the final CRLF to o. */
void moxy_chunk_end(struct evbuffer *o, const moxy_headers_t *trailers);

/* 1 when the comma-separated list value contains token (case-insensitive). */
int moxy_list_has_token(const char *value, size_t vlen, const char *token, size_t tlen);

#endif

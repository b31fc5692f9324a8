/*
 * conn_limit.h -- client connections per client address, counted across
 * every worker of the process (limits.connections_per_client).
 *
 * One table for the process, made before main() and never freed: it
 * outlives configurations, so a reload changes the limit for new
 * connections while the open ones keep their places.  An address is a
 * 16-byte key: IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d, IPv6 cut to
 * its /64 (one host usually holds a whole /64; per /128 it could open
 * connections without end).  Keys go through the process's keyed hash
 * (base/siphash.h): a client chooses its address, never the bucket.  An
 * entry lives while its count is above 0, so the table holds at most one
 * entry per open counted connection (bounded by limits.connections per
 * worker).  Striped mutexes: accepts are rare next to requests.
 */
#ifndef MOXY_CONN_LIMIT_H
#define MOXY_CONN_LIMIT_H

#include <stddef.h>
#include <stdint.h>

/* A connection's place in the table: its key, and whether it holds one. */
typedef struct {
    uint8_t key[16]; /* ::ffff:a.b.c.d, or an IPv6 /64 (the rest 0) */
    unsigned held : 1; /* counted: moxy_conn_limit_leave must be called once */
} moxy_conn_slot_t;

/* Fill s's key from an address of family 4 (4 bytes at addr) or 6 (16
 * bytes); s->held is left 0.  MOXY_OK, or MOXY_ERROR for another family. */
int moxy_conn_limit_key(moxy_conn_slot_t *s, int family, const uint8_t *addr);

/* Count one more connection for s's key when fewer than limit are open
 * (limit 0: no limit, nothing counted).  MOXY_OK: s->held is 1 (when
 * counted); MOXY_DECLINED: over the limit, nothing counted; MOXY_ERROR:
 * out of memory, nothing counted (the caller lets the connection in).
 * *open gets the count for the key (after the increment), when not NULL.
 * Any thread. */
int moxy_conn_limit_enter(moxy_conn_slot_t *s, int limit, int *open);

/* Give s's place back when it holds one (s->held becomes 0); the entry goes
 * when its count reaches 0.  Any thread; harmless on a slot not held. */
void moxy_conn_limit_leave(moxy_conn_slot_t *s);

/* The number of addresses the table holds now (a gauge; any thread). */
long moxy_conn_limit_tracked(void);

/* The text of s's key ("192.0.2.1", "2001:db8:1:2::/64") into buf. */
void moxy_conn_limit_text(const moxy_conn_slot_t *s, char *buf, size_t size);

#endif

/*
 * realip.h -- the real client address behind proxies and load balancers.
 *
 * Two sources, as nginx's realip module and HAProxy's accept-proxy:
 *  - per connection, the PROXY protocol header (v1 text or v2 binary) that a
 *    listener with proxy_protocol = true requires first on every connection:
 *    its source becomes the connection's client address (c->ip), the TCP
 *    peer stays in c->sock_ip;
 *  - per request, when the connection's client address is in
 *    trusted_proxies, the hops listed in X-Forwarded-For (or Forwarded's
 *    for= parameters), walked from the right: the first untrusted hop is the
 *    client (r->client_ip).
 */
#ifndef MOXY_REALIP_H
#define MOXY_REALIP_H

#include "base/config.h"
#include "http/http-t.h"

/* Hops of the real-IP header looked at, from the right; past them the walk
 * stops as if the list began there (a longer chain is a forged one). */
#define MOXY_REALIP_MAX_HOPS 64

/* The longest v1 header, CRLF included (the protocol's own limit), and the
 * fixed part of a v2 header. */
#define MOXY_PROXY_V1_MAX 107
#define MOXY_PROXY_V2_HEAD 16

/* What a PROXY protocol header said. */
typedef struct {
    size_t len;       /* bytes of the header (to drain); MOXY_AGAIN: to look at next */
    int version;      /* 1 or 2 */
    int family;       /* 4 or 6: the source below; 0: keep the socket's address
                       * (v1 UNKNOWN, v2 LOCAL, or a family other than TCP over IP) */
    uint8_t addr[16]; /* source address: 4 or 16 bytes, network order */
    uint16_t port;    /* source port */
    const char *why;  /* MOXY_ERROR: why the header is refused (static text) */
} moxy_proxy_hdr_t;

/* Fill in m (family 4 or 6, addr set, bits the prefix length): the bits past
 * the prefix are cleared, and an IPv4-mapped IPv6 block (::ffff:a.b.c.d/96
 * and longer) becomes the IPv4 block it maps. */
void moxy_cidr_init(moxy_cidr_t *m, int family, int bits);

/* 1 when the address (family 4: 4 bytes at addr, 6: 16 bytes) is in one of
 * the n blocks of list, checked in order; an IPv4-mapped IPv6 address is
 * matched as the IPv4 address it maps. */
int moxy_cidr_match(const moxy_cidr_t *list, int n, int family, const uint8_t *addr);

/* One hop of X-Forwarded-For, n bytes at p without surrounding spaces:
 * "192.0.2.1", "192.0.2.1:80", "2001:db8::1", "[2001:db8::1]" or
 * "[2001:db8::1]:443".  MOXY_OK with *family (4, 6), addr and *port (-1:
 * none given), or MOXY_ERROR. */
int moxy_ip_parse(const char *p, size_t n, int *family, uint8_t addr[16], int *port);

/* inet_pton of the n bytes at p (no port, no brackets).  *family 4 or 6:
 * p must be an address of that family; 0: either, set in *family, and an
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d) comes back as the IPv4 address
 * it maps (a lookup key, as moxy_cidr_match sees it).  MOXY_OK with addr
 * (4 or 16 bytes, network order), or MOXY_ERROR. */
int moxy_ip_pton(const char *p, size_t n, int *family, uint8_t addr[16]);

/* Parse the PROXY protocol header at the start of the n bytes at p.
 * MOXY_OK: *h says what it holds; MOXY_AGAIN: the bytes are the start of a
 * valid header, more must come, and h->len is how many bytes to look at
 * next (v1: MOXY_PROXY_V1_MAX, its line may end sooner; v2: its fixed
 * part, MOXY_PROXY_V2_HEAD, then its whole length; n = 0:
 * MOXY_PROXY_V2_HEAD); MOXY_ERROR: not a valid header, h->why. */
int moxy_proxy_parse(const uint8_t *p, size_t n, moxy_proxy_hdr_t *h);

/* r's head is in and its connection's client address is trusted (the
 * caller checks c->trusted): set r->client_ip (request memory) and
 * r->client_port from the configured real-IP header, walked from the right
 * over trusted hops.  The first untrusted hop wins; when all are trusted,
 * the left-most; an entry that does not parse (or Forwarded's for=unknown,
 * for=_hidden) stops the walk at the last trusted hop (the connection's
 * address when it is the right-most).  Leaves r->client_ip NULL (the
 * connection's address) when nothing changes it. */
void moxy_realip_resolve(moxy_req_t *r);

#endif

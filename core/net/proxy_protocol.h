/*
 * proxy_protocol.h -- the PROXY protocol header (v1 text or v2 binary) that
 * a listener with proxy_protocol = true requires first on every connection,
 * as HAProxy's accept-proxy: its source becomes the connection's client
 * address (c->ip), the TCP peer stays in c->sock_ip.
 */
#ifndef MOXY_PROXY_PROTOCOL_H
#define MOXY_PROXY_PROTOCOL_H

#include "base/moxy.h"

#include <stddef.h>
#include <stdint.h>

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

/* Parse the PROXY protocol header at the start of the n bytes at p.
 * MOXY_OK: *h says what it holds; MOXY_AGAIN: the bytes are the start of a
 * valid header, more must come, and h->len is how many bytes to look at
 * next (v1: MOXY_PROXY_V1_MAX, its line may end sooner; v2: its fixed
 * part, MOXY_PROXY_V2_HEAD, then its whole length; n = 0:
 * MOXY_PROXY_V2_HEAD); MOXY_ERROR: not a valid header, h->why. */
int moxy_proxy_parse(const uint8_t *p, size_t n, moxy_proxy_hdr_t *h);

#endif

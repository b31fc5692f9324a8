/*
 * addr.h -- IP addresses as clients and configurations write them, and
 * address blocks (CIDR) to match them against.
 */
#ifndef MOXY_ADDR_H
#define MOXY_ADDR_H

#include "base/config.h"

/* 1 when the 16 bytes at addr are an IPv4-mapped IPv6 address,
 * ::ffff:a.b.c.d (the IPv4 address is at addr + 12). */
static inline int moxy_ip_v4_mapped(const uint8_t *addr)
{
    static const uint8_t head[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(addr, head, 12) == 0;
}

/* Fill in m (family 4 or 6, addr set, bits the prefix length): the bits past
 * the prefix are cleared, and an IPv4-mapped IPv6 block (::ffff:a.b.c.d/96
 * and longer) becomes the IPv4 block it maps. */
void moxy_cidr_init(moxy_cidr_t *m, int family, int bits);

/* A block as a list file or a configuration writes it, the n bytes at p: an
 * address ("192.0.2.7", "2001:db8::1": the whole address, /32 or /128), or
 * an address, '/' and a prefix length of 1 to 3 digits ("10.0.0.0/8",
 * "2001:db8::/32").  Nothing else: no spaces, no NUL.  The bits past the
 * prefix are cleared ("10.1.2.3/8" is 10.0.0.0/8, as nginx's allow and
 * set_real_ip_from take it), and an IPv4-mapped block (::ffff:a.b.c.d/96
 * and longer) becomes the IPv4 block it maps (moxy_cidr_init).  MOXY_OK
 * with m, or MOXY_ERROR with *why, a static text ("bad address", ...). */
int moxy_cidr_parse(const char *p, size_t n, moxy_cidr_t *m, const char **why);

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


/* The decimal port of the n bytes at p (1..5 digits, <= 65535), or -1. */
int moxy_port_parse(const char *p, size_t n);

#endif

/*
 * realip.h -- the real client address behind proxies and load balancers.
 *
 * Two sources, as nginx's realip module and HAProxy's accept-proxy:
 *  - per connection, the PROXY protocol header (net/proxy_protocol.h);
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

/*
 * resolver.h -- resolving the names of upstream servers without blocking a
 * worker: libevent's evdns on the main thread's event loop, for the whole
 * process.  Each named server is resolved at start and again every pool's
 * `resolve` interval; the addresses (up to MOXY_PEER_MAX_ADDRS, IPv4 and
 * IPv6) are published to its peer (moxy_peer_t.addrs, addr_gen bumped when
 * they change).  A name that stops resolving keeps its last addresses and
 * the failure is logged; a name that never resolved leaves its peer
 * unusable (MOXY_PEER_UNRESOLVED).  Name servers: conf->resolver, else
 * /etc/resolv.conf; /etc/hosts is read too.
 */
#ifndef MOXY_RESOLVER_H
#define MOXY_RESOLVER_H

#include "base/config.h"

#include <event2/event.h>

/* Start resolving every named server of conf on base.  conf's pool state
 * must exist (moxy_upstreams_create).  MOXY_OK (also when there is no name
 * to resolve), or MOXY_ERROR after logging why. */
int moxy_resolver_start(moxy_conf_t *conf, struct event_base *base);

/* Run base until every name has had its first answer (addresses or a
 * failure), or timeout seconds passed.  Called once, before the workers
 * start, so the first requests find the addresses. */
void moxy_resolver_wait(struct event_base *base, double timeout);

/* Cancel pending lookups and timers and free what moxy_resolver_start made
 * (before conf and base are freed).  Safe when nothing was started. */
void moxy_resolver_stop(void);

/* A reload: resolve conf's names from now on (inside the main loop; the
 * lookups in flight for the old configuration are cancelled and their
 * answers ignored).  Peers carried over keep their addresses until the
 * first answers.  MOXY_OK or MOXY_ERROR. */
int moxy_resolver_restart(moxy_conf_t *conf, struct event_base *base);

/* The resolver follows each reload (lifecycle.h). */
extern struct moxy_module_s moxy_resolver_module;

#endif

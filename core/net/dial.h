/*
 * dial.h -- connections moxy opens on behalf of scripts and its own
 * clients (moxy.http, moxy.socket, moxy.redis): find a host's addresses,
 * connect to them in turn, run the TLS handshake, and keep connections
 * idle between uses under a key.
 *
 * A dialer (moxy_dialer_t) is one thread's: the resolver (evdns: /etc/hosts
 * first, then /etc/resolv.conf's servers, made on the first name) and the
 * idle connections, on that thread's event loop.
 *
 * A dial (moxy_dial_t) lives inside its caller's object.  moxy_dial_start
 * either fails at once (nothing to cancel, the reason in d->err) or
 * starts; then exactly one of done(d, MOXY_OK) (d->conn holds the
 * connection, no event armed on it: the caller's now) or done(d,
 * MOXY_ERROR) (d->err says why) follows, always from the event loop, never
 * from inside moxy_dial_start -- unless the caller cancels first.
 */
#ifndef MOXY_DIAL_H
#define MOXY_DIAL_H

#include "base/moxy.h"
#include "net/conn.h"
#include "net/idle_pool.h"
#include "net/tls.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <sys/queue.h>
#include <sys/socket.h>

#define MOXY_DIAL_ADDRS 4     /* addresses of a name tried in turn, IPv4 first */
#define MOXY_DIAL_HOST_MAX 255
#define MOXY_DIAL_ERR_MAX 320

typedef struct moxy_dialer_s moxy_dialer_t;
typedef struct moxy_dial_s moxy_dial_t;
typedef struct moxy_dial_dns_s moxy_dial_dns_t;
typedef void (*moxy_dial_done_fn)(moxy_dial_t *d, int rc);

/* TLS after TCP: none, verifying the peer's certificate, or not verifying. */
enum { MOXY_DIAL_PLAIN = 0, MOXY_DIAL_TLS = 1, MOXY_DIAL_TLS_NOVERIFY = 2 };

struct moxy_dial_s {
    /* set by the caller before moxy_dial_start */
    moxy_dial_done_fn done;
    void *arg;
    double connect_timeout; /* seconds per address */

    /* the dial's state */
    moxy_dialer_t *dialer;
    moxy_dial_dns_t *lookup; /* the name lookup under way, or NULL */
    char host[MOXY_DIAL_HOST_MAX + 1]; /* lower-cased, no brackets */
    char sni[MOXY_DIAL_HOST_MAX + 1];  /* the TLS name; empty: none */
    int port, tls;
    struct sockaddr_storage addr[MOXY_DIAL_ADDRS];
    socklen_t addrlen[MOXY_DIAL_ADDRS];
    int naddrs, addr_i;
    struct event ev; /* the socket's event while connecting or in the handshake */
    int armed, in_tls;
    moxy_conn_t conn; /* fd -1: none */
    char err[MOXY_DIAL_ERR_MAX];
};

/* A dialer for base's thread, its idle connections bounded by idle_max in
 * all and kept at most idle_secs unless a put says less.  NULL: out of
 * memory. */
moxy_dialer_t *moxy_dialer_new(struct event_base *base, int idle_max, double idle_secs);

/* Free dl: its idle connections close, its resolver goes.  Dials still
 * under way must have been cancelled first. */
void moxy_dialer_free(moxy_dialer_t *dl);

/* Start connecting d to host:port (hlen bytes: an IP literal without
 * brackets, or a name; lower-cased here) with tls (MOXY_DIAL_*; sni: the
 * name sent and verified, NULL for host unless host is an IP literal).
 * MOXY_OK: under way, d->done follows; MOXY_ERROR: failed at once, d->err
 * says why. */
int moxy_dial_start(moxy_dial_t *d, moxy_dialer_t *dl, const char *host, size_t hlen, int port,
                    int tls, const char *sni);

/* Stop d (its lookup, its events, its connection); no done follows.
 * Harmless on a dial that is over or was never started. */
void moxy_dial_cancel(moxy_dial_t *d);

/* Make an already connected c TLS (moxy.socket's sslhandshake): d runs the
 * handshake with tls (MOXY_DIAL_TLS*) toward name (nlen bytes: a DNS name,
 * sent as SNI and verified; an IP literal, verified against the
 * certificate's IP names; NULL: nothing sent, only the chain verified),
 * then calls done as moxy_dial_start's.  c is d's from now (on error it
 * is closed).  MOXY_ERROR: failed at once, d->err says why. */
int moxy_dial_tls(moxy_dial_t *d, moxy_dialer_t *dl, moxy_conn_t *c, int tls, const char *name, size_t nlen);

/* --- idle connections, under keys (a script's pool name, "host:port") --- */

/* Keep c idle under key (klen bytes), at most per_key under that key and
 * for idle_secs (<= 0: the dialer's), with uses, the times it was used
 * before.  c is the dialer's from now: refused by a bound, it is closed.
 * MOXY_OK: kept; MOXY_DECLINED: closed. */
int moxy_dialer_put(moxy_dialer_t *dl, const char *key, size_t klen, moxy_conn_t *c, int per_key,
                    double idle_secs, unsigned uses);

/* The newest idle connection under key into *c (now the caller's) and the
 * times it was used into *uses: MOXY_OK; MOXY_DECLINED: none. */
int moxy_dialer_take(moxy_dialer_t *dl, const char *key, size_t klen, moxy_conn_t *c, unsigned *uses);

/* Idle connections dl keeps now. */
int moxy_dialer_idle(const moxy_dialer_t *dl);

#endif

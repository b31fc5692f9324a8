/*
 * dial.c -- a thread's dialer: name lookups, connects in turn, the TLS
 * handshake toward a peer, and idle connections under keys.  See dial.h.
 *
 * A name lookup outlives a cancelled dial: evdns still answers a cancelled
 * lookup (EVUTIL_EAI_CANCEL), and only then is it freed; the dialer lists
 * the lookups evdns holds so that freeing it frees them too.
 */
#include "net/dial.h"

#include <arpa/inet.h>
#include <poll.h>
#include <ctype.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct moxy_dial_dns_s {
    moxy_dialer_t *dl;
    moxy_dial_t *dial; /* the dial waiting for it, or NULL once cancelled */
    struct evdns_getaddrinfo_request *req;
    LIST_ENTRY(moxy_dial_dns_s) link; /* in dl->lookups while evdns holds it */
    int sync;                         /* inside evdns_getaddrinfo: keep the answer */
    int done, result;
    struct evutil_addrinfo *ai;
};

typedef struct dial_key_s dial_key_t;

/* An idle connection.  No buffers: any byte or EOF closes it. */
typedef struct {
    dial_key_t *key;
    moxy_conn_t conn;
    struct event ev; /* readable (the peer closed) or idle timeout */
    moxy_idle_t idle;
    unsigned uses;
} dial_idle_t;

/* The idle connections under one key; freed when it has none. */
struct dial_key_s {
    moxy_dialer_t *dl;
    moxy_idle_list_t idle;
    LIST_ENTRY(dial_key_s) link;
    size_t klen;
    char key[];
};

struct moxy_dialer_s {
    struct event_base *base;
    struct evdns_base *dns; /* made on the first name */
    LIST_HEAD(, moxy_dial_dns_s) lookups;
    LIST_HEAD(, dial_key_s) keys;
    moxy_idle_group_t idle;
};

moxy_dialer_t *moxy_dialer_new(struct event_base *base, int idle_max, double idle_secs)
{
    moxy_dialer_t *dl = calloc(1, sizeof(*dl));
    if (!dl) return NULL;
    dl->base = base;
    LIST_INIT(&dl->lookups);
    LIST_INIT(&dl->keys);
    struct timeval tv = moxy_timeval(idle_secs);
    dl->idle.max = idle_max;
    dl->idle.timeout = event_base_init_common_timeout(base, &tv);
    return dl;
}

/* --- idle connections --- */

static dial_key_t *key_find(moxy_dialer_t *dl, const char *key, size_t klen)
{
    dial_key_t *k;
    LIST_FOREACH(k, &dl->keys, link) {
        if (k->klen == klen && memcmp(k->key, key, klen) == 0) return k;
    }
    return NULL;
}

static void key_drop_if_empty(dial_key_t *k)
{
    if (k->idle.n > 0) return;
    LIST_REMOVE(k, link);
    free(k);
}

/* c leaves its key's list and is freed; its connection is the caller's. */
static void idle_leave(dial_idle_t *c)
{
    dial_key_t *k = c->key;
    moxy_idle_remove(&c->idle);
    event_del(&c->ev);
    key_drop_if_empty(k);
    free(c);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    dial_idle_t *c = arg;
    MOXY_UNUSED(fd);
    /* a TLS 1.3 session ticket is not a reason to close: wait on */
    if (!(what & EV_TIMEOUT) && !moxy_conn_idle_readable(&c->conn)) {
        event_add(&c->ev, c->key->dl->idle.timeout);
        return;
    }
    moxy_conn_t conn = c->conn;
    idle_leave(c);
    moxy_conn_close(&conn);
}

/* 1 when c must not be kept or reused: the peer sent something nobody
 * asked for, or closed (a TLS session ticket alone is not a reason). */
static int conn_dubious(moxy_conn_t *c)
{
    if (moxy_conn_pending(c) > 0) return 1;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return 0;
    return moxy_conn_idle_readable(c);
}

int moxy_dialer_put(moxy_dialer_t *dl, const char *key, size_t klen, moxy_conn_t *conn, int per_key,
                    double idle_secs, unsigned uses)
{
    dial_key_t *k = key_find(dl, key, klen);
    dial_idle_t *c = NULL;
    if (conn->fd < 0 || per_key <= 0 || conn_dubious(conn)) goto refuse;
    while (k && k->idle.n >= per_key) { /* the key's oldest go: the newest are the likelier alive */
        dial_idle_t *old = MOXY_IDLE_OWNER(TAILQ_LAST(&k->idle.conns, moxy_idle_list_head_s), dial_idle_t, idle);
        moxy_conn_t oc = old->conn;
        moxy_idle_remove(&old->idle); /* not idle_leave: k stays for the new one */
        event_del(&old->ev);
        free(old);
        moxy_conn_close(&oc);
    }
    if (dl->idle.n >= dl->idle.max) goto refuse;
    if (!k) {
        k = calloc(1, sizeof(*k) + klen + 1);
        if (!k) goto refuse;
        k->dl = dl;
        moxy_idle_list_init(&k->idle, &dl->idle, per_key);
        k->klen = klen;
        memcpy(k->key, key, klen);
        LIST_INSERT_HEAD(&dl->keys, k, link);
    }
    k->idle.max = per_key;
    c = calloc(1, sizeof(*c));
    if (!c) goto refuse;
    c->key = k;
    c->conn = *conn;
    c->uses = uses;
    event_assign(&c->ev, dl->base, conn->fd, EV_READ, idle_cb, c);
    c->idle.ev = &c->ev;
    if (moxy_idle_put(&k->idle, &c->idle) != MOXY_OK) goto refuse;
    if (idle_secs > 0) {
        struct timeval tv = moxy_timeval(idle_secs > 1e7 ? 1e7 : idle_secs);
        event_add(&c->ev, &tv);
    }
    conn->fd = -1;
    return MOXY_OK;
refuse:
    free(c);
    if (k) key_drop_if_empty(k);
    moxy_conn_close(conn);
    return MOXY_DECLINED;
}

int moxy_dialer_take(moxy_dialer_t *dl, const char *key, size_t klen, moxy_conn_t *out, unsigned *uses)
{
    for (;;) {
        dial_key_t *k = key_find(dl, key, klen);
        moxy_idle_t *i = k ? TAILQ_FIRST(&k->idle.conns) : NULL;
        if (!i) return MOXY_DECLINED;
        dial_idle_t *c = MOXY_IDLE_OWNER(i, dial_idle_t, idle);
        moxy_conn_t conn = c->conn;
        unsigned n = c->uses;
        idle_leave(c);
        /* its close may not have been seen yet: the loop did not run since */
        if (conn_dubious(&conn)) {
            moxy_conn_close(&conn);
            continue;
        }
        *out = conn;
        if (uses) *uses = n;
        return MOXY_OK;
    }
}

int moxy_dialer_idle(const moxy_dialer_t *dl)
{
    return dl->idle.n;
}

void moxy_dialer_free(moxy_dialer_t *dl)
{
    if (!dl) return;
    dial_key_t *k;
    while ((k = LIST_FIRST(&dl->keys))) {
        dial_idle_t *c = MOXY_IDLE_OWNER(TAILQ_FIRST(&k->idle.conns), dial_idle_t, idle);
        moxy_conn_t conn = c->conn;
        idle_leave(c);
        moxy_conn_close(&conn);
    }
    /* lookups evdns still holds: it will never answer them now */
    moxy_dial_dns_t *d;
    while ((d = LIST_FIRST(&dl->lookups))) {
        LIST_REMOVE(d, link);
        if (d->dial) d->dial->lookup = NULL;
        free(d);
    }
    if (dl->dns) evdns_base_free(dl->dns, 0);
    free(dl);
}

/* --- a dial --- */

static void dial_event_cb(evutil_socket_t fd, short what, void *arg);

/* "prefix: strerror(err)" with the first letter of the reason lower-cased. */
static void set_errno_err(moxy_dial_t *d, const char *prefix, int err)
{
    int n = snprintf(d->err, sizeof(d->err), "%s: %s", prefix, strerror(err));
    size_t at = strlen(prefix) + 2;
    if (n > 0 && at < sizeof(d->err)) d->err[at] = (char)tolower((unsigned char)d->err[at]);
}

/* Wait for fd to be what (EV_READ or EV_WRITE), at most secs (<= 0: no
 * bound of its own). */
static void dial_arm(moxy_dial_t *d, short what, double secs)
{
    if (d->armed) event_del(&d->ev);
    event_assign(&d->ev, d->dialer->base, d->conn.fd, what, dial_event_cb, d);
    struct timeval tv = moxy_timeval(secs > 1e7 ? 1e7 : secs);
    event_add(&d->ev, secs > 0 ? &tv : NULL);
    d->armed = 1;
}

static void dial_disarm(moxy_dial_t *d)
{
    if (d->armed) event_del(&d->ev);
    d->armed = 0;
}

void moxy_dial_cancel(moxy_dial_t *d)
{
    dial_disarm(d);
    moxy_dial_dns_t *l = d->lookup;
    if (l) {
        d->lookup = NULL;
        l->dial = NULL; /* freed when evdns answers the cancel */
        evdns_getaddrinfo_cancel(l->req);
    }
    if (d->conn.fd >= 0) moxy_conn_close(&d->conn);
    d->in_tls = 0;
}

static void dial_finish(moxy_dial_t *d, int rc)
{
    dial_disarm(d);
    if (rc != MOXY_OK && d->conn.fd >= 0) moxy_conn_close(&d->conn);
    d->in_tls = 0;
    d->done(d, rc);
}

/* Go on with the handshake; done when it is over. */
static void dial_tls_step(moxy_dial_t *d)
{
    short want = 0;
    const char *why = NULL;
    int kind;
    int rc = moxy_tls_handshake(&d->conn, &want, &why, &kind);
    if (rc == MOXY_ERROR) {
        snprintf(d->err, sizeof(d->err), "TLS handshake failed: %s", why ? why : "error");
        dial_finish(d, MOXY_ERROR);
        return;
    }
    if (rc == MOXY_AGAIN) {
        /* the caller's own timer bounds the handshake as a whole; the
         * connect timeout bounds each wait */
        dial_arm(d, want == EV_WRITE ? EV_WRITE : EV_READ, d->connect_timeout);
        return;
    }
    dial_finish(d, MOXY_OK);
}

/* Switch d->conn to TLS and start the handshake (d->sni: the name).  MOXY_ERROR: d->err says why. */
static int dial_tls_begin(moxy_dial_t *d)
{
    moxy_tls_client_t *cl = moxy_tls_client_default(d->tls == MOXY_DIAL_TLS);
    const char *sni = d->sni[0] ? d->sni : NULL;
    const char *verify = sni ? sni : d->host[0] ? d->host : NULL; /* an IP literal: its IP names */
    if (!cl || moxy_tls_connect(&d->conn, cl, sni, verify) != MOXY_OK) {
        snprintf(d->err, sizeof(d->err), "TLS could not be set up");
        return MOXY_ERROR;
    }
    d->in_tls = 1;
    /* the first step from the loop, as every completion is */
    dial_arm(d, EV_WRITE, d->connect_timeout);
    return MOXY_OK;
}

/* Connect to d's next address.  MOXY_OK: connecting (the event armed);
 * MOXY_ERROR: no address left (d->err says why, unless an earlier failure
 * set it). */
static int dial_connect_next(moxy_dial_t *d)
{
    for (; d->addr_i < d->naddrs; d->addr_i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&d->addr[d->addr_i];
        int done;
        if (moxy_conn_connect(&d->conn, sa, d->addrlen[d->addr_i], &done) != MOXY_OK) {
            set_errno_err(d, "connect", errno);
            d->conn.fd = -1;
            continue;
        }
        /* connected at once or not: the loop reports it (writable) */
        dial_arm(d, EV_WRITE, d->connect_timeout);
        return MOXY_OK;
    }
    return MOXY_ERROR;
}

static void dial_event_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_dial_t *d = arg;
    MOXY_UNUSED(fd);
    d->armed = 0;
    if (d->in_tls) {
        if (what & EV_TIMEOUT) {
            snprintf(d->err, sizeof(d->err), "timeout");
            dial_finish(d, MOXY_ERROR);
            return;
        }
        dial_tls_step(d);
        return;
    }
    if (what & EV_TIMEOUT) {
        snprintf(d->err, sizeof(d->err), "timeout");
    } else if (moxy_conn_connected(&d->conn) == MOXY_OK) {
        if (d->tls == MOXY_DIAL_PLAIN) {
            dial_finish(d, MOXY_OK);
            return;
        }
        if (dial_tls_begin(d) != MOXY_OK) dial_finish(d, MOXY_ERROR);
        return;
    } else {
        set_errno_err(d, "connect", errno);
    }
    moxy_conn_close(&d->conn);
    d->addr_i++;
    if (dial_connect_next(d) != MOXY_OK) dial_finish(d, MOXY_ERROR);
}

/* Keep up to MOXY_DIAL_ADDRS addresses of ai, IPv4 first. */
static void dial_set_addrs(moxy_dial_t *d, const struct evutil_addrinfo *ai)
{
    d->naddrs = d->addr_i = 0;
    for (int pass = 0; pass < 2; pass++) {
        int fam = pass == 0 ? AF_INET : AF_INET6;
        for (const struct evutil_addrinfo *a = ai; a && d->naddrs < MOXY_DIAL_ADDRS; a = a->ai_next) {
            if (a->ai_family != fam || a->ai_addrlen > sizeof(d->addr[0])) continue;
            memcpy(&d->addr[d->naddrs], a->ai_addr, a->ai_addrlen);
            d->addrlen[d->naddrs] = (socklen_t)a->ai_addrlen;
            if (fam == AF_INET) ((struct sockaddr_in *)&d->addr[d->naddrs])->sin_port = htons((uint16_t)d->port);
            else ((struct sockaddr_in6 *)&d->addr[d->naddrs])->sin6_port = htons((uint16_t)d->port);
            d->naddrs++;
        }
    }
}

/* d->host as an IP literal: its one address.  0 when it is a name. */
static int dial_literal(moxy_dial_t *d)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)&d->addr[0];
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&d->addr[0];
    memset(&d->addr[0], 0, sizeof(d->addr[0]));
    if (inet_pton(AF_INET, d->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)d->port);
        d->addrlen[0] = sizeof(*s4);
    } else if (inet_pton(AF_INET6, d->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)d->port);
        d->addrlen[0] = sizeof(*s6);
    } else {
        return 0;
    }
    d->naddrs = 1;
    d->addr_i = 0;
    return 1;
}

/* The lookup of d's host ended: connect.  Frees ai. */
static int dial_resolved(moxy_dial_t *d, int result, struct evutil_addrinfo *ai)
{
    if (result != 0) {
        snprintf(d->err, sizeof(d->err), "resolve %s: %s", d->host, evutil_gai_strerror(result));
        if (ai) evutil_freeaddrinfo(ai);
        return MOXY_ERROR;
    }
    dial_set_addrs(d, ai);
    if (ai) evutil_freeaddrinfo(ai);
    if (d->naddrs == 0) {
        snprintf(d->err, sizeof(d->err), "resolve %s: no address", d->host);
        return MOXY_ERROR;
    }
    return dial_connect_next(d);
}

static void dns_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
    moxy_dial_dns_t *l = arg;
    if (l->sync) { /* evdns_getaddrinfo answered at once (/etc/hosts) */
        l->done = 1;
        l->result = result;
        l->ai = ai;
        return;
    }
    moxy_dial_t *d = l->dial;
    LIST_REMOVE(l, link);
    free(l);
    if (!d) { /* cancelled */
        if (ai) evutil_freeaddrinfo(ai);
        return;
    }
    d->lookup = NULL;
    if (dial_resolved(d, result, ai) != MOXY_OK) dial_finish(d, MOXY_ERROR);
}

/* The dialer's resolver: /etc/resolv.conf and /etc/hosts, made once. */
static struct evdns_base *dialer_dns(moxy_dialer_t *dl)
{
    if (dl->dns) return dl->dns;
    dl->dns = evdns_base_new(dl->base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!dl->dns) { /* no usable resolv.conf: /etc/hosts still works */
        dl->dns = evdns_base_new(dl->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (dl->dns) evdns_base_load_hosts(dl->dns, NULL);
    }
    return dl->dns;
}

/* Set d's common fields; MOXY_ERROR on a bad host or name. */
static int dial_init(moxy_dial_t *d, moxy_dialer_t *dl, const char *host, size_t hlen, int port, int tls,
                     const char *sni)
{
    d->dialer = dl;
    d->lookup = NULL;
    d->armed = d->in_tls = 0;
    d->conn.fd = -1;
    d->naddrs = d->addr_i = 0;
    d->err[0] = '\0';
    d->tls = tls;
    d->port = port;
    if (hlen > MOXY_DIAL_HOST_MAX || memchr(host, 0, hlen)) {
        snprintf(d->err, sizeof(d->err), "bad host");
        return MOXY_ERROR;
    }
    for (size_t i = 0; i < hlen; i++)
        d->host[i] = (char)tolower((unsigned char)host[i]);
    d->host[hlen] = '\0';
    d->sni[0] = '\0';
    if (sni) {
        size_t n = strlen(sni);
        if (n > MOXY_DIAL_HOST_MAX) {
            snprintf(d->err, sizeof(d->err), "bad TLS server name");
            return MOXY_ERROR;
        }
        memcpy(d->sni, sni, n + 1);
    }
    if (d->connect_timeout <= 0) d->connect_timeout = 60;
    return MOXY_OK;
}

int moxy_dial_start(moxy_dial_t *d, moxy_dialer_t *dl, const char *host, size_t hlen, int port, int tls,
                    const char *sni)
{
    if (dial_init(d, dl, host, hlen, port, tls, sni) != MOXY_OK) return MOXY_ERROR;
    if (hlen == 0 || port <= 0 || port > 65535) {
        snprintf(d->err, sizeof(d->err), "bad host or port");
        return MOXY_ERROR;
    }
    int literal = dial_literal(d);
    if (!sni && !literal && tls != MOXY_DIAL_PLAIN) memcpy(d->sni, d->host, hlen + 1);
    if (literal) return dial_connect_next(d);

    struct evdns_base *dns = dialer_dns(dl);
    moxy_dial_dns_t *l = dns ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        snprintf(d->err, sizeof(d->err), "resolve %s: no resolver", d->host);
        return MOXY_ERROR;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    l->dl = dl;
    l->dial = d;
    l->sync = 1;
    l->req = evdns_getaddrinfo(dns, d->host, NULL, &hints, dns_cb, l);
    l->sync = 0;
    if (l->done || !l->req) {
        int result = l->done ? l->result : EVUTIL_EAI_FAIL;
        struct evutil_addrinfo *ai = l->ai;
        free(l);
        return dial_resolved(d, result, ai);
    }
    LIST_INSERT_HEAD(&dl->lookups, l, link);
    d->lookup = l;
    return MOXY_OK;
}

/* 1 when host is an IPv4 or IPv6 literal (no SNI is sent for those). */
static int is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int moxy_dial_tls(moxy_dial_t *d, moxy_dialer_t *dl, moxy_conn_t *c, int tls, const char *name, size_t nlen)
{
    moxy_conn_t conn = *c;
    c->fd = -1;
    if (dial_init(d, dl, name ? name : "", name ? nlen : 0, 0, tls, NULL) != MOXY_OK) {
        moxy_conn_close(&conn);
        return MOXY_ERROR;
    }
    if (d->host[0] && !is_ip_literal(d->host)) memcpy(d->sni, d->host, strlen(d->host) + 1);
    d->conn = conn;
    if (dial_tls_begin(d) != MOXY_OK) {
        moxy_conn_close(&d->conn);
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

/*
 * resolver.c -- resolving the names of upstream servers (see resolver.h).
 *
 * One evdns_base for the process, on the main thread's event loop.  Each
 * named server is one entry: a lookup (evdns_getaddrinfo, A and AAAA, with
 * /etc/hosts first) and a timer that starts the next lookup the pool's
 * `resolve` seconds after the previous answer.  The DNS TTL is not used: the
 * pool's interval is what the user asked for, and a short TTL would only
 * make us query more often.
 *
 * The addresses of an answer are sorted, so an answer that lists the same
 * addresses in another order (round-robin DNS) is no change: addr_gen moves,
 * and idle connections to the old addresses close, only when the set does.
 */
#include "http/lifecycle.h"
#include "proxy/resolver.h"
#include "base/log.h"
#include "proxy/upstream.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

/* addresses of one answer looked at; the first MOXY_PEER_MAX_ADDRS (sorted) are kept */
#define MAX_ANSWER 64

/* One named server being resolved. */
typedef struct {
    moxy_peer_t *peer;
    struct event *timer;                   /* starts the next lookup */
    struct evdns_getaddrinfo_request *req; /* the lookup in flight, or NULL */
    int pending;                           /* a lookup whose callback has not run yet */
    int answered;                          /* had its first answer (addresses or failure) */
    long long started;                     /* moxy_mono_ms() when the lookup started */
    int failing;                           /* the last lookup failed, with this error: */
    int last_err;
    int dead;                              /* a reload replaced the resolver: ignore answers */
} name_t;

static struct {
    struct event_base *base;
    struct evdns_base *dns;
    name_t *names;
    int nnames;
    int unanswered; /* names still waiting for their first answer */
    int inflight;   /* lookups whose callback has not run yet */
    double timeout; /* seconds a lookup may take */
    int stopping;
} resolver;

/* What a reload's restart left behind: freed once libevent delivered the
 * cancellations (they arrive through deferred callbacks). */
typedef struct retired_s {
    struct retired_s *next;
    struct evdns_base *dns;
    name_t *names;
    struct event *ev;
} retired_t;

static retired_t *retired;
static void retired_free_cb(evutil_socket_t fd, short what, void *arg);

/* Order of addresses: IPv4 before IPv6, then by address bytes (ports are
 * all the server's). */
static int addr_cmp(const void *a, const void *b)
{
    const struct sockaddr_storage *x = a, *y = b;
    if (x->ss_family != y->ss_family) return x->ss_family == AF_INET ? -1 : 1;
    if (x->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)x)->sin_addr,
                      &((const struct sockaddr_in *)y)->sin_addr, sizeof(struct in_addr));
    return memcmp(&((const struct sockaddr_in6 *)x)->sin6_addr,
                  &((const struct sockaddr_in6 *)y)->sin6_addr, sizeof(struct in6_addr));
}

/* "127.0.0.2, ::1" for the n addresses at a, into buf. */
static const char *addrs_text(const struct sockaddr_storage *a, int n, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < size; i++) {
        char ip[INET6_ADDRSTRLEN];
        const void *src = a[i].ss_family == AF_INET
                              ? (const void *)&((const struct sockaddr_in *)&a[i])->sin_addr
                              : (const void *)&((const struct sockaddr_in6 *)&a[i])->sin6_addr;
        if (!evutil_inet_ntop(a[i].ss_family, src, ip, sizeof(ip))) strcpy(ip, "?");
        int w = snprintf(buf + len, size - len, "%s%s", i ? ", " : "", ip);
        if (w < 0) break;
        len += (size_t)w;
    }
    return buf;
}

/* Why a lookup failed.  evdns_getaddrinfo reports a timeout, SERVFAIL or
 * REFUSED all as EVUTIL_EAI_FAIL; one that took the whole timeout was a
 * timeout, and saying so tells the user where to look. */
static const char *failure_text(const name_t *n, int err, char *buf, size_t size)
{
    double took = (double)(moxy_mono_ms() - n->started) / 1000.0;
    if (err == EVUTIL_EAI_FAIL && took >= resolver.timeout * 0.9) {
        snprintf(buf, size, "no answer from the name servers within %gs", resolver.timeout);
        return buf;
    }
    return evutil_gai_strerror(err);
}

/* The lookup of n failed with err (EVUTIL_EAI_*): keep what the peer has.
 * Logged when a run of failures starts or its error changes, not at every
 * interval. */
static void lookup_failed(name_t *n, int err)
{
    moxy_peer_t *p = n->peer;
    char why[96];
    if (!n->failing || n->last_err != err) {
        if (atomic_load(&p->resolved)) {
            char buf[MOXY_PEER_MAX_ADDRS * (INET6_ADDRSTRLEN + 2)];
            pthread_mutex_lock(&p->addr_lock);
            addrs_text(p->addrs, p->naddrs, buf, sizeof(buf));
            pthread_mutex_unlock(&p->addr_lock);
            moxy_log_warn("upstream %s: cannot resolve %s: %s; keeping its last addresses (%s)",
                          p->pool->conf->name, p->conf->addr.text,
                          failure_text(n, err, why, sizeof(why)), buf);
        } else {
            moxy_log_warn("upstream %s: cannot resolve %s: %s; it gets no requests until it "
                          "resolves",
                          p->pool->conf->name, p->conf->addr.text,
                          failure_text(n, err, why, sizeof(why)));
        }
    }
    n->failing = 1;
    n->last_err = err;
}

/* Publish the addresses of answer res to n's peer. */
static void lookup_answered(name_t *n, const struct evutil_addrinfo *res)
{
    moxy_peer_t *p = n->peer;
    struct sockaddr_storage got[MAX_ANSWER];
    int ngot = 0;
    for (const struct evutil_addrinfo *ai = res; ai && ngot < MAX_ANSWER; ai = ai->ai_next) {
        struct sockaddr_storage *sa = &got[ngot];
        memset(sa, 0, sizeof(*sa));
        if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(struct sockaddr_in)) {
            memcpy(sa, ai->ai_addr, sizeof(struct sockaddr_in));
            ((struct sockaddr_in *)sa)->sin_port = htons(p->conf->port);
        } else if (ai->ai_family == AF_INET6 && ai->ai_addrlen >= sizeof(struct sockaddr_in6)) {
            memcpy(sa, ai->ai_addr, sizeof(struct sockaddr_in6));
            ((struct sockaddr_in6 *)sa)->sin6_port = htons(p->conf->port);
        } else {
            continue;
        }
        ngot++;
    }
    qsort(got, (size_t)ngot, sizeof(got[0]), addr_cmp);
    int n_new = 0; /* sorted, without duplicates, at most MOXY_PEER_MAX_ADDRS */
    for (int i = 0; i < ngot && n_new < MOXY_PEER_MAX_ADDRS; i++)
        if (n_new == 0 || addr_cmp(&got[n_new - 1], &got[i]) != 0) got[n_new++] = got[i];
    if (n_new == 0) {
        lookup_failed(n, EVUTIL_EAI_NODATA);
        return;
    }

    int changed = 0;
    pthread_mutex_lock(&p->addr_lock);
    if (p->naddrs != n_new) changed = 1;
    for (int i = 0; !changed && i < n_new; i++)
        changed = addr_cmp(&p->addrs[i], &got[i]) != 0;
    if (changed) {
        for (int i = 0; i < n_new; i++) {
            p->addrs[i] = got[i];
            p->addrlens[i] = got[i].ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                         : sizeof(struct sockaddr_in6);
        }
        p->naddrs = n_new;
        atomic_fetch_add(&p->addr_gen, 1);
    }
    pthread_mutex_unlock(&p->addr_lock);
    atomic_store(&p->resolved, 1);

    if (changed || n->failing) {
        char buf[MOXY_PEER_MAX_ADDRS * (INET6_ADDRSTRLEN + 2)];
        moxy_log_info("upstream %s: %s resolves %sto %s", p->pool->conf->name, p->conf->addr.text,
                      changed ? "" : "again ", addrs_text(got, n_new, buf, sizeof(buf)));
    }
    n->failing = 0;
}

static void lookup_cb(int err, struct evutil_addrinfo *res, void *arg)
{
    name_t *n = arg;
    if (n->dead) { /* moxy_resolver_restart's cancellation */
        if (res) evutil_freeaddrinfo(res);
        return;
    }
    n->req = NULL;
    n->pending = 0;
    resolver.inflight--;
    if (err == EVUTIL_EAI_CANCEL || resolver.stopping) goto out; /* moxy_resolver_stop */
    if (err == 0)
        lookup_answered(n, res);
    else
        lookup_failed(n, err);
    if (!n->answered) {
        n->answered = 1;
        resolver.unanswered--;
    }
    struct timeval tv = moxy_timeval(n->peer->pool->conf->resolve);
    evtimer_add(n->timer, &tv);
out:
    if (res) evutil_freeaddrinfo(res);
}

/* Start a lookup of n.  evdns_getaddrinfo calls lookup_cb before it returns
 * when it can answer at once (/etc/hosts, an error) and then returns NULL. */
static void lookup(name_t *n)
{
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    n->pending = 1;
    n->started = moxy_mono_ms();
    resolver.inflight++;
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(resolver.dns, n->peer->conf->name, NULL, &hints, lookup_cb, n);
    if (n->pending) n->req = req;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    name_t *n = arg;
    if (!n->pending) lookup(n);
}

/* evdns's own messages (a name server failed, is back up) into the error log. */
static void evdns_log_cb(int is_warn, const char *msg)
{
    if (is_warn)
        moxy_log_warn("resolver: %s", msg);
    else if (moxy_log_enabled(MOXY_LOG_DEBUG))
        moxy_log(MOXY_LOG_DEBUG, NULL, "resolver: %s", msg);
}

/* Name servers: the configured ones (and /etc/hosts), else the system's.
 * Timeout: each lookup gets conf->resolver.timeout in all, as two tries of
 * half of it (one lost UDP packet does not fail a lookup). */
static int dns_configure(const moxy_conf_t *conf)
{
    if (conf->resolver.nnameservers > 0) {
        for (int i = 0; i < conf->resolver.nnameservers; i++) {
            const char *ns = conf->resolver.nameservers[i];
            if (evdns_base_nameserver_ip_add(resolver.dns, ns) != 0) {
                moxy_log_err("resolver: cannot use name server %s", ns);
                return MOXY_ERROR;
            }
        }
        /* NULL would load only "localhost"; a missing file is no error */
        evdns_base_load_hosts(resolver.dns, "/etc/hosts");
    } else {
        int rc = evdns_base_resolv_conf_parse(resolver.dns, DNS_OPTIONS_ALL, "/etc/resolv.conf");
        /* 1: no file, 6: no nameserver line; libevent then asks 127.0.0.1 */
        if (rc != 0)
            moxy_log_warn("resolver: /etc/resolv.conf: %s",
                          rc == 1   ? "cannot open it; using 127.0.0.1"
                          : rc == 6 ? "no name server; using 127.0.0.1"
                                    : "cannot read it");
    }
    char val[32];
    resolver.timeout = conf->resolver.timeout > 0 ? conf->resolver.timeout : 5;
    snprintf(val, sizeof(val), "%.3f", resolver.timeout / 2);
    if (evdns_base_set_option(resolver.dns, "timeout:", val) != 0 ||
        evdns_base_set_option(resolver.dns, "attempts:", "2") != 0) {
        moxy_log_err("resolver: cannot set the lookup timeout %s", val);
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

int moxy_resolver_start(moxy_conf_t *conf, struct event_base *base)
{
    int count = 0;
    for (int i = 0; i < conf->nupstreams; i++)
        for (int j = 0; j < conf->upstreams[i].nservers; j++)
            if (conf->upstreams[i].servers[j].name) count++;
    if (count == 0) return MOXY_OK;

    resolver.base = base;
    evdns_set_log_fn(evdns_log_cb);
    resolver.names = calloc((size_t)count, sizeof(*resolver.names));
    resolver.dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!resolver.names || !resolver.dns) {
        moxy_log_err("resolver: out of memory");
        goto err;
    }
    if (dns_configure(conf) != MOXY_OK) goto err;
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_upstream_t *up = conf->upstreams[i].state;
        for (int j = 0; j < up->npeers; j++) {
            if (!up->peers[j].conf->name) continue;
            name_t *n = &resolver.names[resolver.nnames];
            n->peer = &up->peers[j];
            n->timer = evtimer_new(base, timer_cb, n);
            if (!n->timer) {
                moxy_log_err("resolver: out of memory");
                goto err;
            }
            resolver.nnames++;
        }
    }
    /* counted first: a lookup answered from /etc/hosts calls back at once */
    resolver.unanswered = resolver.nnames;
    for (int i = 0; i < resolver.nnames; i++)
        lookup(&resolver.names[i]);
    return MOXY_OK;

err:
    moxy_resolver_stop();
    return MOXY_ERROR;
}

static void wait_expired_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    *(int *)arg = 1;
}

void moxy_resolver_wait(struct event_base *base, double timeout)
{
    if (resolver.unanswered <= 0) return;
    int expired = 0;
    struct event *t = evtimer_new(base, wait_expired_cb, &expired);
    struct timeval tv = moxy_timeval(timeout);
    if (!t || evtimer_add(t, &tv) != 0) {
        if (t) event_free(t);
        return; /* out of memory: start without waiting */
    }
    while (resolver.unanswered > 0 && !expired)
        if (event_base_loop(base, EVLOOP_ONCE) != 0) break;
    event_free(t);
    if (resolver.unanswered > 0)
        moxy_log_warn("resolver: %d of %d upstream name%s not answered within %gs; starting "
                      "without %s",
                      resolver.unanswered, resolver.nnames, resolver.nnames == 1 ? "" : "s",
                      timeout, resolver.unanswered == 1 ? "it" : "them");
}

/* Free every name's timer and cancel its lookup in flight.  dead: their
 * lookup_cb ignores them (a restart retires the names); else it still
 * counts them in resolver.inflight (a stop waits for that). */
static void names_cancel(int dead)
{
    for (int i = 0; i < resolver.nnames; i++) {
        name_t *n = &resolver.names[i];
        n->dead = dead;
        if (n->timer) event_free(n->timer);
        n->timer = NULL;
        if (n->req) evdns_getaddrinfo_cancel(n->req);
        n->req = NULL;
    }
}

void moxy_resolver_stop(void)
{
    resolver.stopping = 1;
    names_cancel(0);
    if (resolver.dns) {
        /* Also cancels a probe of a name server that stopped answering,
         * which evdns_base_free would otherwise reach after freeing it. */
        evdns_base_clear_nameservers_and_suspend(resolver.dns);
        /* libevent 2.1 delivers cancellations through deferred callbacks
         * and frees its requests there: run them (lookup_cb then only
         * counts) while the names they point to still exist.  Only what is
         * ready runs; the loop does not block. */
        for (int i = 0; i < 64 && (i < 2 || resolver.inflight > 0); i++)
            event_base_loop(resolver.base, EVLOOP_NONBLOCK);
        evdns_base_free(resolver.dns, 0);
    }
    /* what reloads left: their cancellations first, as above */
    for (int i = 0; retired && i < 2; i++) event_base_loop(event_get_base(retired->ev), EVLOOP_NONBLOCK);
    while (retired) retired_free_cb(-1, 0, retired);
    evdns_set_log_fn(NULL);
    free(resolver.names);
    memset(&resolver, 0, sizeof(resolver));
}

static void retired_free_cb(evutil_socket_t fd, short what, void *arg)
{
    retired_t *old = arg, **pp;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    for (pp = &retired; *pp != old; pp = &(*pp)->next) {}
    *pp = old->next;
    evdns_base_free(old->dns, 0);
    free(old->names);
    event_free(old->ev);
    free(old);
}

int moxy_resolver_restart(moxy_conf_t *conf, struct event_base *base)
{
    if (resolver.dns) {
        retired_t *old = calloc(1, sizeof(*old));
        if (!old || !(old->ev = evtimer_new(base, retired_free_cb, old))) {
            free(old);
            moxy_log_err("resolver: out of memory");
            return MOXY_ERROR;
        }
        names_cancel(1);
        evdns_base_clear_nameservers_and_suspend(resolver.dns);
        old->dns = resolver.dns;
        old->names = resolver.names;
        struct timeval tv = {2, 0};
        evtimer_add(old->ev, &tv);
        old->next = retired;
        retired = old;
        memset(&resolver, 0, sizeof(resolver));
    }
    return moxy_resolver_start(conf, base);
}

moxy_module_t moxy_resolver_module = {
    .name = "resolver",
    .reload = moxy_resolver_restart,
};

/*
 * fleet.c -- the fleet's thread: a Redis subscriber and a publisher on
 * their own event loop, the queue of messages to publish, the checks and
 * the application of messages received; see fleet.h.
 *
 * Costs an attacker could raise are bounded: a message is at most
 * MOXY_FLEET_MSG_MAX bytes (the subscriber's connection fails past 1 MiB,
 * and opens again after its backoff); messages applied are limited to
 * FLEET_RATE a second, and the costly ones (a prefix purge walks the whole
 * cache, a flush a whole dict) to FLEET_COSTLY_RATE; a signed message is
 * taken once (its node and nonce are remembered for twice max_age) and
 * only within max_age of its timestamp.  The checks run on the fleet's
 * thread, never on a worker's.
 */
#include "api/fleet.h"
#include "base/log.h"
#include "base/shared_dict.h"
#include "base/siphash.h"
#include "cache/cache.h"
#include "net/dial.h"
#include "net/redis.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#define FLEET_RATE 1000.0        /* messages applied a second (and a burst as large) */
#define FLEET_COSTLY_RATE 10.0   /* prefix purges and flushes a second */
#define FLEET_COSTLY_BURST 100.0
#define FLEET_SEEN 32768         /* nonces remembered (a power of two) */
#define FLEET_SEEN_PROBE 8
#define FLEET_PING_S 10          /* the subscription's liveness check */
#define FLEET_LOG_EVERY_MS 10000 /* failures logged at most this often */
#define FLEET_MAX_REPLY (1024 * 1024)
#define FLEET_LOG_LINES 20       /* messages applied logged a second, at most */

typedef struct out_msg_s {
    TAILQ_ENTRY(out_msg_s) link;
    struct fleet_s *f;
    moxy_redis_req_t *req; /* while Redis has it */
    size_t len;
    char data[];
} out_msg_t;

TAILQ_HEAD(out_msgs_s, out_msg_s);

typedef struct {
    uint64_t h;
    long long until; /* ms, monotonic */
} seen_t;

typedef struct fleet_s {
    /* the settings, as the configuration gave them (for reloads) and as used */
    char *node_conf;            /* NULL: hostname:pid */
    char *node, *channel, *secret;
    size_t node_len, secret_len;
    double max_age;
    moxy_redis_conf_t rc;

    pthread_t thread;
    struct event_base *base;
    moxy_dialer_t *dl;
    moxy_redis_t *pub, *sub;
    int wake_fd;
    struct event wake_ev, ping_ev;

    /* under the lock: the publishers' side */
    int stopping;
    struct out_msgs_s queue;
    int nqueued;
    size_t qbytes;
    uint32_t seq;

    /* the fleet's thread only */
    struct out_msgs_s inflight;
    int up;
    long long down_logged; /* ms of the last "still down" line */
    double tokens, costly;
    long long refill_ms;
    seen_t *seen;
    long long log_sec; /* the second of the lines below */
    int log_lines;     /* messages applied logged in it */
} fleet_t;

static pthread_mutex_t fleet_lock = PTHREAD_MUTEX_INITIALIZER;
static fleet_t *fleet; /* the running one, or NULL (under fleet_lock) */
static uint32_t instance; /* this process's: tells its own messages from another process's of the same node */

static atomic_int st_connected;
static atomic_ullong st_published, st_publish_failed, st_received, st_applied, st_dropped[MOXY_FLEET_DROP_N];
static atomic_llong fail_logged_ms;
static atomic_ullong fail_unlogged;

static const char *const drop_names[MOXY_FLEET_DROP_N] = {"malformed", "too_large", "bad_signature",
                                                          "stale", "replay", "rate"};

const char *moxy_fleet_drop_name(int reason)
{
    return reason >= 0 && reason < MOXY_FLEET_DROP_N ? drop_names[reason] : "?";
}

void moxy_fleet_stats(moxy_fleet_stats_t *st)
{
    pthread_mutex_lock(&fleet_lock);
    st->enabled = fleet != NULL;
    pthread_mutex_unlock(&fleet_lock);
    st->connected = atomic_load(&st_connected);
    st->published = atomic_load(&st_published);
    st->publish_failed = atomic_load(&st_publish_failed);
    st->received = atomic_load(&st_received);
    st->applied = atomic_load(&st_applied);
    for (int i = 0; i < MOXY_FLEET_DROP_N; i++) st->dropped[i] = atomic_load(&st_dropped[i]);
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A publish failed (why): counted; logged at most every FLEET_LOG_EVERY_MS,
 * with how many went unlogged since.  Any thread. */
static void publish_failed(int kind, const char *why)
{
    atomic_fetch_add(&st_publish_failed, 1);
    long long now = moxy_mono_ms(), last = atomic_load(&fail_logged_ms);
    if (now - last < FLEET_LOG_EVERY_MS || !atomic_compare_exchange_strong(&fail_logged_ms, &last, now)) {
        atomic_fetch_add(&fail_unlogged, 1);
        return;
    }
    unsigned long long more = atomic_exchange(&fail_unlogged, 0);
    char also[64] = "";
    if (more) snprintf(also, sizeof(also), "; %llu more failed since the last line", more);
    moxy_log_warn("fleet: a %s was not broadcast: %s (applied here only%s)", moxy_fleet_kind_name(kind), why, also);
}

/* --- publishing --- */

int moxy_fleet_publish(int kind, const char *a1, size_t a1len, const char *a2, size_t a2len)
{
    pthread_mutex_lock(&fleet_lock);
    fleet_t *f = fleet;
    if (!f) {
        pthread_mutex_unlock(&fleet_lock);
        return MOXY_DECLINED;
    }
    const char *why = NULL;
    size_t cap = 4 + 6 * 8 + 20 + f->node_len + 16 + 12 + a1len + a2len + MOXY_FLEET_SIG_HEX + 16;
    out_msg_t *m = NULL;
    if (f->nqueued >= MOXY_FLEET_QUEUE_MAX || f->qbytes + cap > MOXY_FLEET_QUEUE_BYTES) {
        why = "too many messages waiting for Redis";
    } else if (a1len > MOXY_FLEET_ARG_MAX || a2len > MOXY_FLEET_ARG_MAX) {
        why = "too large";
    } else if (!(m = malloc(sizeof(*m) + cap))) {
        why = "out of memory";
    } else {
        uint64_t nonce = (uint64_t)instance << 32 | ++f->seq;
        long n = moxy_fleet_msg_encode(m->data, cap, wall_ms(), f->node, f->node_len, nonce, kind, a1, a1len, a2,
                                       a2len, f->secret, f->secret_len);
        if (n < 0) {
            why = "too large";
            free(m);
        } else {
            m->len = (size_t)n;
            m->f = f;
            m->req = NULL;
            TAILQ_INSERT_TAIL(&f->queue, m, link);
            f->nqueued++;
            f->qbytes += cap;
            uint64_t one = 1;
            if (write(f->wake_fd, &one, sizeof(one)) < 0) { /* the counter is full: a wake-up is pending */
            }
        }
    }
    pthread_mutex_unlock(&fleet_lock);
    if (why) {
        publish_failed(kind, why);
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

void moxy_fleet_cache_purged(int prefix, const char *key, size_t len)
{
    moxy_fleet_publish(prefix ? MOXY_FLEET_PURGE_PREFIX : MOXY_FLEET_PURGE, key, len, NULL, 0);
}

static int msg_kind(const out_msg_t *m)
{
    moxy_fleet_msg_t pm;
    int why;
    return moxy_fleet_msg_parse(m->data, m->len, &pm, &why) == MOXY_OK ? pm.kind : 0;
}

static void published_cb(void *arg, redisReply **replies, int n, const char *err)
{
    out_msg_t *m = arg;
    fleet_t *f = m->f;
    TAILQ_REMOVE(&f->inflight, m, link);
    if (err) publish_failed(msg_kind(m), err);
    else if (n < 1 || replies[0]->type == REDIS_REPLY_ERROR)
        publish_failed(msg_kind(m), n < 1 ? "no reply" : replies[0]->str);
    else atomic_fetch_add(&st_published, 1);
    free(m);
}

static void send_one(fleet_t *f, out_msg_t *m)
{
    const char *argv[3] = {"PUBLISH", f->channel, m->data};
    size_t lens[3] = {7, strlen(f->channel), m->len};
    int argc[1] = {3};
    char err[MOXY_REDIS_ERR_MAX];
    if (moxy_redis_send(f->pub, 1, argc, argv, lens, published_cb, m, &m->req, err, sizeof(err)) != MOXY_OK) {
        publish_failed(msg_kind(m), err);
        free(m);
        return;
    }
    TAILQ_INSERT_TAIL(&f->inflight, m, link);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    fleet_t *f = arg;
    MOXY_UNUSED(what);
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN) return;
    struct out_msgs_s todo;
    TAILQ_INIT(&todo);
    pthread_mutex_lock(&fleet_lock);
    int stop = f->stopping;
    if (!stop) {
        TAILQ_CONCAT(&todo, &f->queue, link);
        f->nqueued = 0;
        f->qbytes = 0;
    }
    pthread_mutex_unlock(&fleet_lock);
    if (stop) {
        event_base_loopbreak(f->base);
        return;
    }
    out_msg_t *m;
    while ((m = TAILQ_FIRST(&todo))) {
        TAILQ_REMOVE(&todo, m, link);
        send_one(f, m);
    }
}

/* --- receiving --- */

static void on_state(void *arg, int up, const char *why)
{
    fleet_t *f = arg;
    atomic_store(&st_connected, up);
    long long now = moxy_mono_ms();
    if (up) {
        moxy_log_info("fleet: subscribed to %s on %s:%d as node %s", f->channel, f->rc.host, f->rc.port, f->node);
    } else if (f->up) {
        moxy_log_warn("fleet: lost the subscription to %s on %s:%d: %s (subscribing again; messages published "
                      "meanwhile are not seen here)", f->channel, f->rc.host, f->rc.port, why);
        f->down_logged = now;
    } else if (now - f->down_logged >= 30000 || f->down_logged == 0) {
        moxy_log_warn("fleet: cannot subscribe to %s on %s:%d: %s (trying again)", f->channel, f->rc.host,
                      f->rc.port, why);
        f->down_logged = now;
    }
    f->up = up;
}

static void drop(int reason)
{
    atomic_fetch_add(&st_dropped[reason], 1);
}

/* 1 when the message of node and nonce was seen within its window; else
 * remembered until until. */
static int seen_before(fleet_t *f, const moxy_fleet_msg_t *m, long long now, long long until)
{
    char buf[MOXY_FLEET_NODE_MAX + 16];
    memcpy(buf, m->node.data, m->node.len);
    memcpy(buf + m->node.len, m->nonce.data, 16);
    uint64_t h = moxy_hash_keyed(buf, m->node.len + 16);
    seen_t *victim = NULL;
    for (int i = 0; i < FLEET_SEEN_PROBE; i++) {
        seen_t *s = &f->seen[(h + (uint64_t)i) & (FLEET_SEEN - 1)];
        if (s->until > now && s->h == h) return 1;
        if (!victim || s->until < victim->until) victim = s;
    }
    victim->h = h;
    victim->until = until;
    return 0;
}

/* Take a token of the rate (and of the costly one for costly kinds). */
static int rate_take(fleet_t *f, int kind, long long now)
{
    double dt = (double)(now - f->refill_ms) / 1000.0;
    f->refill_ms = now;
    f->tokens = MOXY_MIN(FLEET_RATE, f->tokens + dt * FLEET_RATE);
    f->costly = MOXY_MIN(FLEET_COSTLY_BURST, f->costly + dt * FLEET_COSTLY_RATE);
    int costly = kind == MOXY_FLEET_PURGE_PREFIX || kind == MOXY_FLEET_DICT_FLUSH;
    if (f->tokens < 1 || (costly && f->costly < 1)) return 0;
    f->tokens -= 1;
    if (costly) f->costly -= 1;
    return 1;
}

#define LOG_ARG_MAX 256 /* bytes of a key shown in a log line */

/* The n bytes at s for a log line (at most max of them): printable ASCII as
 * it is, the rest as \xNN, so that a message cannot write lines of its own. */
static void log_escape(char *out, size_t cap, const char *s, size_t n, size_t max)
{
    static const char digits[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && i < max && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = digits[c >> 4];
            out[o++] = digits[c & 15];
        }
    }
    if (n > max && o + 4 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static void apply(fleet_t *f, const moxy_fleet_msg_t *m)
{
    /* arg1 in a buffer of its own (it may hold NULs: lengths count, not strings) */
    char *a1 = malloc(m->arg1.len + 1);
    if (!a1) return;
    memcpy(a1, m->arg1.data, m->arg1.len);
    a1[m->arg1.len] = '\0';
    int n = 0;
    const char *what = "";
    switch (m->kind) {
    case MOXY_FLEET_PURGE:
    case MOXY_FLEET_PURGE_PREFIX:
        if (moxy_cache_enabled())
            n = m->kind == MOXY_FLEET_PURGE ? moxy_cache_drop(a1, m->arg1.len)
                                            : moxy_cache_invalidate_prefix(a1, m->arg1.len);
        what = "cached object(s)";
        break;
    case MOXY_FLEET_DICT_DELETE:
    case MOXY_FLEET_DICT_FLUSH: {
        moxy_shdict_t *d = moxy_shdict_find(a1, m->arg1.len);
        if (!d) {
            what = "no such dict here";
            break;
        }
        if (m->kind == MOXY_FLEET_DICT_FLUSH) {
            moxy_ffi_shdict_flush_all(d);
        } else {
            int err = 0;
            moxy_ffi_shdict_store(d, MOXY_SHDICT_SET, m->arg2.data, m->arg2.len, MOXY_SHDICT_NIL, NULL, 0, 0, 0, &err);
        }
        what = "done";
        break;
    }
    }
    atomic_fetch_add(&st_applied, 1);
    /* a line per message, FLEET_LOG_LINES a second at most: a flood must not flood the log too */
    long long sec = moxy_mono_ms() / 1000;
    if (sec != f->log_sec) {
        f->log_sec = sec;
        f->log_lines = 0;
    }
    if (f->log_lines++ < FLEET_LOG_LINES) {
        char count[24] = "", e1[LOG_ARG_MAX * 4 + 8], e2[LOG_ARG_MAX * 4 + 8], en[MOXY_FLEET_NODE_MAX * 4 + 8];
        if (m->kind == MOXY_FLEET_PURGE || m->kind == MOXY_FLEET_PURGE_PREFIX) snprintf(count, sizeof(count), "%d ", n);
        log_escape(e1, sizeof(e1), m->arg1.data, m->arg1.len, LOG_ARG_MAX);
        log_escape(e2, sizeof(e2), m->arg2.data, m->arg2.len, LOG_ARG_MAX);
        log_escape(en, sizeof(en), m->node.data, m->node.len, MOXY_FLEET_NODE_MAX);
        moxy_log(MOXY_LOG_INFO, NULL, "fleet: %s %s%s%s from %s: %s%s%s", moxy_fleet_kind_name(m->kind), e1,
                 m->arg2.len ? " " : "", e2, en, count, what,
                 f->log_lines == FLEET_LOG_LINES ? " (no more of these lines this second)" : "");
    }
    free(a1);
}

static uint32_t nonce_instance(const moxy_str_t *nonce)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        char c = nonce->data[i];
        v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}

static void on_message(void *arg, const char *p, size_t len)
{
    fleet_t *f = arg;
    atomic_fetch_add(&st_received, 1);
    moxy_fleet_msg_t m;
    int why;
    if (moxy_fleet_msg_parse(p, len, &m, &why) != MOXY_OK) {
        drop(why == MOXY_FLEET_E_TOO_LARGE ? MOXY_FLEET_DROP_TOO_LARGE : MOXY_FLEET_DROP_MALFORMED);
        return;
    }
    if (f->secret_len && !moxy_fleet_msg_verify(p, &m, f->secret, f->secret_len)) {
        drop(MOXY_FLEET_DROP_SIGNATURE);
        return;
    }
    if (m.node.len == f->node_len && memcmp(m.node.data, f->node, f->node_len) == 0 &&
        nonce_instance(&m.nonce) == instance)
        return; /* our own echo: applied before it was published */
    long long age = wall_ms() - m.ts_ms, max = (long long)(f->max_age * 1000);
    if (age > max || age < -max) {
        drop(MOXY_FLEET_DROP_STALE);
        return;
    }
    long long now = moxy_mono_ms();
    if (seen_before(f, &m, now, now + 2 * max)) {
        drop(MOXY_FLEET_DROP_REPLAY);
        return;
    }
    if (!rate_take(f, m.kind, now)) {
        drop(MOXY_FLEET_DROP_RATE);
        return;
    }
    apply(f, &m);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    fleet_t *f = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (!f->up) return;
    /* a PING on the subscription: a connection that died silently fails its timeout and opens again */
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    int argc[1] = {1};
    char err[MOXY_REDIS_ERR_MAX];
    moxy_redis_send(f->sub, 1, argc, argv, lens, NULL, NULL, NULL, err, sizeof(err));
}

/* --- the thread --- */

static void *fleet_main(void *arg)
{
    fleet_t *f = arg;
    event_base_loop(f->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* Free f (its thread over, or never started). */
static void fleet_free(fleet_t *f)
{
    if (!f) return;
    moxy_redis_free(f->pub);
    moxy_redis_free(f->sub);
    out_msg_t *m;
    while ((m = TAILQ_FIRST(&f->inflight))) { /* orphans of the freed client: each freed by its cancel */
        TAILQ_REMOVE(&f->inflight, m, link);
        moxy_redis_cancel(m->req);
        free(m);
        atomic_fetch_add(&st_publish_failed, 1); /* not known to have been published */
    }
    while ((m = TAILQ_FIRST(&f->queue))) {
        TAILQ_REMOVE(&f->queue, m, link);
        free(m);
        atomic_fetch_add(&st_publish_failed, 1);
    }
    if (f->base) {
        event_del(&f->wake_ev);
        event_del(&f->ping_ev);
    }
    if (f->wake_fd >= 0) close(f->wake_fd);
    if (f->dl) moxy_dialer_free(f->dl);
    if (f->base) event_base_free(f->base);
    free(f->node_conf);
    free(f->node);
    free(f->channel);
    free(f->secret);
    free(f->rc.host);
    free(f->rc.user);
    free(f->rc.password);
    free(f->rc.server_name);
    free(f->seen);
    free(f);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* 1 when f runs with conf's fleet settings. */
static int same_conf(const fleet_t *f, const moxy_conf_t *conf)
{
    const moxy_fleet_conf_t *c = &conf->fleet;
    return moxy_str_same(f->node_conf, c->node) && moxy_str_same(f->channel, c->channel) &&
           f->secret_len == c->secret_len && (!c->secret_len || memcmp(f->secret, c->secret, c->secret_len) == 0) &&
           f->max_age == c->max_age && moxy_str_same(f->rc.host, c->host) && f->rc.port == c->port &&
           f->rc.db == c->db && moxy_str_same(f->rc.user, c->user) && moxy_str_same(f->rc.password, c->password) &&
           f->rc.tls == c->tls && moxy_str_same(f->rc.server_name, c->server_name) && f->rc.timeout == c->timeout &&
           f->rc.connect_timeout == c->connect_timeout;
}

static fleet_t *fleet_new(const moxy_conf_t *conf)
{
    const moxy_fleet_conf_t *c = &conf->fleet;
    fleet_t *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->wake_fd = -1;
    TAILQ_INIT(&f->queue);
    TAILQ_INIT(&f->inflight);
    char node[MOXY_FLEET_NODE_MAX + 1];
    if (c->node) {
        snprintf(node, sizeof(node), "%s", c->node);
    } else {
        char host[64] = "moxy";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(node, sizeof(node), "%s:%ld", host, (long)getpid());
    }
    f->node = strdup(node);
    f->node_len = strlen(node);
    f->node_conf = dup_or_null(c->node);
    f->channel = strdup(c->channel);
    if (c->secret_len && (f->secret = malloc(c->secret_len))) {
        memcpy(f->secret, c->secret, c->secret_len);
        f->secret_len = c->secret_len;
    }
    f->max_age = c->max_age;
    f->rc.host = strdup(c->host);
    f->rc.port = c->port;
    f->rc.user = dup_or_null(c->user);
    f->rc.password = dup_or_null(c->password);
    f->rc.db = c->db;
    f->rc.tls = c->tls;
    f->rc.server_name = dup_or_null(c->server_name);
    f->rc.timeout = c->timeout;
    f->rc.connect_timeout = c->connect_timeout;
    f->rc.pool_size = 1; /* one connection: messages leave in order */
    f->rc.max_reply = FLEET_MAX_REPLY;
    f->tokens = FLEET_RATE;
    f->costly = FLEET_COSTLY_BURST;
    f->refill_ms = moxy_mono_ms();
    f->seen = calloc(FLEET_SEEN, sizeof(seen_t));
    if (!f->node || !f->channel || !f->rc.host || (c->secret_len && !f->secret) || (c->user && !f->rc.user) ||
        (c->password && !f->rc.password) || (c->server_name && !f->rc.server_name) || !f->seen)
        goto err;
    struct event_config *ec = event_config_new();
    if (!ec) goto err;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    f->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!f->base) goto err;
    f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->wake_fd < 0) goto err;
    event_assign(&f->wake_ev, f->base, f->wake_fd, EV_READ | EV_PERSIST, wake_cb, f);
    event_add(&f->wake_ev, NULL);
    event_assign(&f->ping_ev, f->base, -1, EV_PERSIST, ping_cb, f);
    struct timeval ping = {FLEET_PING_S, 0};
    event_add(&f->ping_ev, &ping);
    if (!(f->dl = moxy_dialer_new(f->base, 1, 1))) goto err;
    if (!(f->pub = moxy_redis_new(f->dl, f->base, &f->rc))) goto err;
    if (!(f->sub = moxy_redis_new(f->dl, f->base, &f->rc))) goto err;
    if (moxy_redis_subscribe(f->sub, f->channel, on_message, on_state, f) != MOXY_OK) goto err;
    return f;
err:
    fleet_free(f);
    return NULL;
}

/* Stop f's thread: it ends its loop at its next turn; then free f. */
static void fleet_end(fleet_t *f)
{
    pthread_mutex_lock(&fleet_lock);
    f->stopping = 1;
    uint64_t one = 1;
    if (write(f->wake_fd, &one, sizeof(one)) < 0) { /* a wake-up is pending already */
    }
    pthread_mutex_unlock(&fleet_lock);
    pthread_join(f->thread, NULL);
    atomic_store(&st_connected, 0);
    fleet_free(f);
}

void moxy_fleet_stop(void)
{
    pthread_mutex_lock(&fleet_lock);
    fleet_t *f = fleet;
    fleet = NULL;
    pthread_mutex_unlock(&fleet_lock);
    if (!f) return;
    fleet_end(f);
    moxy_log_info("fleet: stopped");
}

int moxy_fleet_apply(const moxy_conf_t *conf)
{
    pthread_mutex_lock(&fleet_lock);
    fleet_t *old = fleet;
    pthread_mutex_unlock(&fleet_lock);
    if (!conf->fleet.enabled) {
        moxy_fleet_stop();
        return MOXY_OK;
    }
    if (old && same_conf(old, conf)) return MOXY_OK; /* the connections stay */
    if (!instance) {
        uint64_t r = moxy_hash_keyed(&old, sizeof(old)) ^ (uint64_t)wall_ms() ^ (uint64_t)getpid() << 20;
        instance = (uint32_t)(r ^ r >> 32) | 1;
    }
    moxy_fleet_stop();
    fleet_t *f = fleet_new(conf);
    if (!f) {
        moxy_log_err("fleet: cannot start: out of memory");
        return MOXY_ERROR;
    }
    /* the thread takes signals from no one: the main thread handles them */
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved);
    int rc = pthread_create(&f->thread, NULL, fleet_main, f);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (rc != 0) {
        moxy_log_err("fleet: cannot start its thread: %s", strerror(rc));
        fleet_free(f);
        return MOXY_ERROR;
    }
    pthread_mutex_lock(&fleet_lock);
    fleet = f;
    pthread_mutex_unlock(&fleet_lock);
    moxy_log_info("fleet: node %s, channel %s on %s:%d%s", f->node, f->channel, f->rc.host, f->rc.port,
                  f->secret_len ? ", messages signed" : ", messages NOT signed (set fleet.secret)");
    return MOXY_OK;
}

static int fleet_reload(moxy_conf_t *conf, struct event_base *base)
{
    MOXY_UNUSED(base);
    return moxy_fleet_apply(conf);
}

moxy_module_t moxy_fleet_module = {
    .name = "fleet",
    .reload = fleet_reload,
};

/* --- moxy.fleet --- */

EXPORT int moxy_ffi_fleet_dict(const char *name, size_t nlen, const char *key, size_t klen)
{
    moxy_shdict_t *d = moxy_shdict_find(name, nlen);
    if (!d) return -1;
    if (key && (klen == 0 || klen > MOXY_SHDICT_MAX_KEY)) return -2;
    if (key) {
        int err = 0;
        moxy_ffi_shdict_store(d, MOXY_SHDICT_SET, key, klen, MOXY_SHDICT_NIL, NULL, 0, 0, 0, &err);
    } else {
        moxy_ffi_shdict_flush_all(d);
    }
    int rc = moxy_fleet_publish(key ? MOXY_FLEET_DICT_DELETE : MOXY_FLEET_DICT_FLUSH, name, nlen, key,
                                key ? klen : 0);
    return rc == MOXY_OK ? 0 : rc == MOXY_DECLINED ? 1 : 2;
}

/*
 * worker.c -- a worker's loop as its requests see it: accept, spare
 * buffers, generations (see worker.h).
 */
#include "http/worker.h"
#include "net/dial.h"
#include "codec/coder.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACCEPT_BATCH 64

void moxy_accept_enable(moxy_worker_t *w, int on)
{
    if (w->accepting == on) return;
    for (int i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd < 0) continue;
        if (on) event_add(&w->listeners[i].ev, NULL);
        else event_del(&w->listeners[i].ev);
    }
    w->accepting = on;
}

/* Out of descriptors: how soon accept is tried again, first and at most
 * (doubling in between).  A closing connection of the worker's tries at
 * once; the timer covers descriptors held elsewhere (another worker, the
 * cache, origins, scripts' sockets).  The episode ends (and is logged as
 * over) once accept has worked for ACCEPT_SETTLE_MS without failing again:
 * at the edge, where each close lets one more connection in, accept comes
 * and goes with every connection, and that is still one episode. */
#define ACCEPT_RETRY_MIN_MS 100
#define ACCEPT_RETRY_MAX_MS 1000
#define ACCEPT_SETTLE_MS 1000

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg);

static void accept_retry_arm(moxy_worker_t *w, int ms)
{
    if (!w->accept_retry_set) {
        evtimer_assign(&w->accept_retry, w->base, accept_retry_cb, w);
        w->accept_retry_set = 1;
    }
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(&w->accept_retry, &tv);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_worker_t *w = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    if (w->draining || !w->fd_paused_ms) return;
    if (w->fd_back_ms) { /* accept has worked since fd_back_ms, and not failed again */
        moxy_log(MOXY_LOG_WARN, NULL,
                 "worker %d: accept resumed after %lld ms paused out of descriptors (%u failed accepts)", w->id,
                 w->fd_back_ms - w->fd_paused_ms, w->fd_paused_hits);
        w->fd_paused_ms = w->fd_back_ms = 0;
        w->fd_paused_hits = 0;
        return;
    }
    if (!w->accepting && w->nconns < w->g->conf->limits.connections) moxy_accept_enable(w, 1);
}

/* accept failed with EMFILE, ENFILE, ENOBUFS or ENOMEM (err): stop
 * accepting, and try again after the backoff or when a connection closes.
 * The first failure of an episode is logged; the rest are only counted. */
static void accept_out_of_fds(moxy_worker_t *w, int err)
{
    MOXY_STAT_ADD(w->stats.accept_fd_errors, 1);
    if (!w->fd_paused_ms) {
        w->fd_paused_ms = MOXY_MAX(moxy_mono_ms(), 1);
        w->fd_paused_hits = 0;
        w->fd_retry_ms = ACCEPT_RETRY_MIN_MS;
        MOXY_STAT_ADD(w->stats.accept_paused[0], 1);
        moxy_log_err("worker %d: accept: %s; pausing accept, retrying every %d..%d ms and when a connection closes",
                     w->id, strerror(err), ACCEPT_RETRY_MIN_MS, ACCEPT_RETRY_MAX_MS);
    } else if (w->fd_back_ms) {
        w->fd_retry_ms = ACCEPT_RETRY_MIN_MS; /* it had come back: short again */
    } else {
        w->fd_retry_ms = MOXY_MIN(w->fd_retry_ms * 2, ACCEPT_RETRY_MAX_MS);
    }
    w->fd_back_ms = 0;
    w->fd_paused_hits++;
    moxy_accept_enable(w, 0);
    accept_retry_arm(w, w->fd_retry_ms);
}

/* A connection was accepted during an episode out of descriptors: it is
 * over unless accept fails again within ACCEPT_SETTLE_MS. */
static void accept_fds_back(moxy_worker_t *w)
{
    w->fd_back_ms = MOXY_MAX(moxy_mono_ms(), 1);
    accept_retry_arm(w, ACCEPT_SETTLE_MS);
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_listener_t *l = arg;
    moxy_worker_t *w = l->w;
    MOXY_UNUSED(what);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int cfd = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
            /* out of descriptors, or of socket memory: the listener stays
             * readable, so retrying at once would spin */
            if (moxy_errno_own_shortage(errno)) {
                accept_out_of_fds(w, errno);
                return;
            }
            moxy_log_err("worker %d: accept: %s", w->id, strerror(errno));
            return;
        }
        if (w->fd_paused_ms && !w->fd_back_ms) accept_fds_back(w);
        l->accept(w, cfd, (struct sockaddr *)&ss, l->conf_index);
        if (w->nconns >= w->g->conf->limits.connections) {
            /* at the limit every close lets one more in and pauses again:
             * a line a second at most */
            MOXY_STAT_ADD(w->stats.accept_paused[1], 1);
            long long now = moxy_mono_ms();
            if (!w->limit_log_ms || now - w->limit_log_ms >= 1000) {
                moxy_log(MOXY_LOG_WARN, NULL,
                         "worker %d: %d connections (limits.connections); pausing accept (%u more pauses since the "
                         "last line)",
                         w->id, w->nconns, w->limit_quiet);
                w->limit_log_ms = now;
                w->limit_quiet = 0;
            } else {
                w->limit_quiet++;
            }
            moxy_accept_enable(w, 0);
            return;
        }
    }
}

int moxy_worker_admit(moxy_worker_t *w, moxy_conn_slot_t *s, int family, const uint8_t *addr, int trusted)
{
    int limit = w->g->conf->limits.connections_per_client, open = 0;
    s->held = 0;
    if (limit <= 0 || trusted || moxy_conn_limit_key(s, family, addr) != MOXY_OK) return MOXY_OK;
    if (moxy_conn_limit_enter(s, limit, &open) != MOXY_DECLINED) return MOXY_OK; /* out of memory: let in */
    MOXY_STAT_ADD(w->stats.client_refused, 1);
    long long now = moxy_mono_ms();
    if (w->refused_log_ms && now - w->refused_log_ms < 1000) {
        w->refused_quiet++;
        return MOXY_DECLINED;
    }
    char a[64];
    moxy_conn_limit_text(s, a, sizeof(a));
    moxy_log(MOXY_LOG_WARN, NULL,
             "worker %d: client %s: %d connections open (limits.connections_per_client); refusing "
             "(%u more refused since the last line)",
             w->id, a, open, w->refused_quiet);
    w->refused_log_ms = now;
    w->refused_quiet = 0;
    return MOXY_DECLINED;
}

void moxy_worker_conn_closed(moxy_worker_t *w)
{
    MOXY_STAT_ADD(w->nconns, -1);
    if (w->draining) {
        if (w->nconns == 0) event_base_loopexit(w->base, NULL);
        return;
    }
    if (!w->accepting && w->nconns < w->g->conf->limits.connections) moxy_accept_enable(w, 1);
}

void moxy_listener_assign(moxy_worker_t *w, moxy_listener_t *l, int i, int fd, moxy_accept_fn accept)
{
    l->w = w;
    l->accept = accept;
    l->conf_index = i;
    l->fd = fd;
    if (fd >= 0) event_assign(&l->ev, w->base, fd, EV_READ | EV_PERSIST, accept_cb, l);
}

void moxy_listeners_close(moxy_worker_t *w)
{
    moxy_accept_enable(w, 0);
    if (w->accept_retry_set) evtimer_del(&w->accept_retry);
    for (int i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd >= 0) close(w->listeners[i].fd);
        w->listeners[i].fd = -1;
    }
}

struct evbuffer *moxy_worker_buf_get(moxy_worker_t *w)
{
    if (w->nbuf_free > 0) return w->buf_free[--w->nbuf_free];
    struct evbuffer *b = evbuffer_new();
    /* written to sockets: a file segment added (a cache hit's memfd body)
     * goes with sendfile, not read into memory */
    if (b) evbuffer_set_flags(b, EVBUFFER_FLAG_DRAINS_TO_FD);
    return b;
}

void moxy_worker_buf_put(moxy_worker_t *w, struct evbuffer *b)
{
    if (w->nbuf_free < MOXY_BUF_FREE_MAX && evbuffer_get_length(b) == 0) w->buf_free[w->nbuf_free++] = b;
    else evbuffer_free(b);
}

void moxy_worker_buf_free_all(moxy_worker_t *w)
{
    while (w->nbuf_free > 0) evbuffer_free(w->buf_free[--w->nbuf_free]);
    moxy_coders_free(w->coders);
    w->coders = NULL;
    moxy_dialer_free(w->dialer);
    w->dialer = NULL;
}

/* Idle connections a worker keeps for scripts and its own clients, and for how long at most. */
#define WORKER_DIAL_IDLE_MAX 1024
#define WORKER_DIAL_IDLE_SECS 60

struct moxy_dialer_s *moxy_worker_dialer(moxy_worker_t *w)
{
    if (!w->dialer) w->dialer = moxy_dialer_new(w->base, WORKER_DIAL_IDLE_MAX, WORKER_DIAL_IDLE_SECS);
    return w->dialer;
}

/* --- generations --- */

moxy_wgen_t *moxy_wgen_alloc(moxy_worker_t *w, const moxy_conf_t *conf)
{
    moxy_wgen_t *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->w = w;
    g->conf = conf;
    g->refs = 1;
    g->lua_body = -2; /* LUA_NOREF */
    LIST_INIT(&g->timers);
    g->tv_client_header = moxy_timeval(conf->timeouts.client_header);
    g->tv_client_body = moxy_timeval(conf->timeouts.client_body);
    g->tv_client_send = moxy_timeval(conf->timeouts.client_send);
    g->tv_connect = moxy_timeval(conf->timeouts.connect);
    g->tv_upstream = moxy_timeval(conf->timeouts.upstream);
    g->tv_keepalive = moxy_timeval(conf->timeouts.keepalive);
    /* Common timeouts: O(1) re-arming for the timeouts every connection
     * uses (libevent keeps one queue per duration, shared by generations
     * that agree; past its limit of 256, plain timeouts) */
    struct event_base *b = w->base;
    g->ctv_keepalive = event_base_init_common_timeout(b, &g->tv_keepalive);
    g->ctv_client_body = event_base_init_common_timeout(b, &g->tv_client_body);
    g->ctv_client_send = event_base_init_common_timeout(b, &g->tv_client_send);
    g->ctv_upstream = event_base_init_common_timeout(b, &g->tv_upstream);
    if (!g->ctv_keepalive) g->ctv_keepalive = &g->tv_keepalive;
    if (!g->ctv_client_body) g->ctv_client_body = &g->tv_client_body;
    if (!g->ctv_client_send) g->ctv_client_send = &g->tv_client_send;
    if (!g->ctv_upstream) g->ctv_upstream = &g->tv_upstream;
    return g;
}

void moxy_wgen_release(moxy_wgen_t *g)
{
    if (--g->refs > 0) return;
    if (g->free) g->free(g);
    else free(g);
}

moxy_worker_t *moxy_worker_alloc(int id)
{
    moxy_worker_t *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->id = id;
    w->control_fd = -1;
    LIST_INIT(&w->sessions);
    LIST_INIT(&w->detached);
    LIST_INIT(&w->retired);
    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        w->base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (!w->base) {
        snprintf(w->error, sizeof(w->error), "cannot create an event loop");
        return w;
    }
    if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng)) {
        w->rng[0] = (uint64_t)time(NULL) ^ ((uint64_t)id << 32);
        w->rng[1] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    }
    if (!w->rng[0] && !w->rng[1]) w->rng[1] = 1;
    return w;
}

/*
 * worker.c -- worker threads: event loop, listening sockets, accept,
 * drain/stop on command from the main thread; see worker.h.
 */
#include "worker.h"
#include "geoip.h"
#include "http.h"
#include "http_fetch.h"
#include "lua_bridge.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#define ACCEPT_BATCH 64


static void accept_enable(moxy_worker_t *w, int on)
{
    if (w->accepting == on) return;
    for (int i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd < 0) continue;
        if (on) event_add(&w->listeners[i].ev, NULL);
        else event_del(&w->listeners[i].ev);
    }
    w->accepting = on;
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
            if (errno == EMFILE || errno == ENFILE) {
                /* out of descriptors: stop accepting until a connection closes */
                moxy_log_err("worker %d: accept: %s; pausing accept", w->id, strerror(errno));
                accept_enable(w, 0);
                return;
            }
            moxy_log_err("worker %d: accept: %s", w->id, strerror(errno));
            return;
        }
        moxy_client_accept(w, cfd, (struct sockaddr *)&ss, l->conf_index);
        if (w->nconns >= w->conf->limits.connections) {
            moxy_log(MOXY_LOG_WARN, NULL, "worker %d: %d connections (limits.connections); pausing accept",
                     w->id, w->nconns);
            accept_enable(w, 0);
            return;
        }
    }
}

void moxy_worker_conn_closed(moxy_worker_t *w)
{
    MOXY_STAT_ADD(w->nconns, -1);
    if (w->draining) {
        if (w->nconns == 0) event_base_loopexit(w->base, NULL);
        return;
    }
    if (!w->accepting && w->nconns < w->conf->limits.connections) accept_enable(w, 1);
}

static int open_listener(moxy_worker_t *w, int i)
{
    const moxy_listen_conf_t *lc = &w->conf->listens[i];
    moxy_listener_t *l = &w->listeners[i];
    l->w = w;
    l->conf_index = i;
    l->fd = socket(lc->addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) goto err;
    int one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(l->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto err;
    if (lc->addr.sa.ss_family == AF_INET6) setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(l->fd, (const struct sockaddr *)&lc->addr.sa, lc->addr.salen) < 0) goto err;
    if (listen(l->fd, lc->backlog) < 0) goto err;
    event_assign(&l->ev, w->base, l->fd, EV_READ | EV_PERSIST, accept_cb, l);
    return MOXY_OK;
err:
    snprintf(w->error, sizeof(w->error), "listen %s: %s", lc->addr.text, strerror(errno));
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
    return MOXY_ERROR;
}

static void close_listeners(moxy_worker_t *w)
{
    accept_enable(w, 0);
    for (int i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd >= 0) close(w->listeners[i].fd);
        w->listeners[i].fd = -1;
    }
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_worker_t *w = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_log_warn("worker %d: drain deadline passed with %d connections open; closing them", w->id,
                  w->nconns);
    event_base_loopbreak(w->base);
}

static void control_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_worker_t *w = arg;
    MOXY_UNUSED(what);
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN) moxy_log_err("worker %d: control: %s", w->id, strerror(errno));
    int cmd = atomic_exchange(&w->command, 0);
    if (cmd & MOXY_WORKER_STOP) {
        event_base_loopbreak(w->base);
        return;
    }
    if ((cmd & MOXY_WORKER_DRAIN) && !w->draining) {
        w->draining = 1;
        close_listeners(w);
        moxy_upstream_close_idle(w);
        moxy_client_t *c = LIST_FIRST(&w->clients), *next;
        for (; c; c = next) {
            next = LIST_NEXT(c, link);
            moxy_client_drain(c);
        }
        if (w->nconns == 0) {
            event_base_loopexit(w->base, NULL);
            return;
        }
        struct timeval tv = moxy_timeval(w->conf->timeouts.drain);
        evtimer_assign(&w->drain_timer, w->base, drain_timeout_cb, w);
        evtimer_add(&w->drain_timer, &tv);
    }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_worker_t *w = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_alog_flush(&w->alog);
    moxy_geoip_worker_refresh(w);
    /* event-loop lag: how late this one-second timer fires (a loop kept
     * busy by a slow callback fires it late) */
    long long now = moxy_mono_us();
    if (w->stats.timer_due_us) MOXY_STAT_SET(w->stats.loop_lag_us, MOXY_MAX(0, now - w->stats.timer_due_us));
    w->stats.timer_due_us = now + 1000000;
}

struct evbuffer *moxy_worker_buf_get(moxy_worker_t *w)
{
    if (w->nbuf_free > 0) return w->buf_free[--w->nbuf_free];
    return evbuffer_new();
}

void moxy_worker_buf_put(moxy_worker_t *w, struct evbuffer *b)
{
    if (w->nbuf_free < MOXY_BUF_FREE_MAX && evbuffer_get_length(b) == 0) w->buf_free[w->nbuf_free++] = b;
    else evbuffer_free(b);
}

void moxy_worker_buf_free_all(moxy_worker_t *w)
{
    while (w->nbuf_free > 0) evbuffer_free(w->buf_free[--w->nbuf_free]);
}

moxy_worker_t *moxy_worker_alloc(moxy_conf_t *conf, int id)
{
    moxy_worker_t *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->id = id;
    w->conf = conf;
    w->lua_body = -2; /* LUA_NOREF */
    w->control_fd = -1;
    LIST_INIT(&w->clients);
    LIST_INIT(&w->detached);
    LIST_INIT(&w->timers);
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
    if (moxy_stats_init(w) != MOXY_OK) {
        snprintf(w->error, sizeof(w->error), "out of memory");
        return w;
    }
    w->tv_client_header = moxy_timeval(conf->timeouts.client_header);
    w->tv_client_body = moxy_timeval(conf->timeouts.client_body);
    w->tv_client_send = moxy_timeval(conf->timeouts.client_send);
    w->tv_connect = moxy_timeval(conf->timeouts.connect);
    w->tv_upstream = moxy_timeval(conf->timeouts.upstream);
    w->tv_keepalive = moxy_timeval(conf->timeouts.keepalive);
    /* Common timeouts: O(1) re-arming for the timeouts every connection uses. */
    w->ctv_keepalive = event_base_init_common_timeout(w->base, &w->tv_keepalive);
    w->ctv_client_body = event_base_init_common_timeout(w->base, &w->tv_client_body);
    w->ctv_client_send = event_base_init_common_timeout(w->base, &w->tv_client_send);
    w->ctv_upstream = event_base_init_common_timeout(w->base, &w->tv_upstream);
    if (getrandom(w->rng, sizeof(w->rng), 0) != sizeof(w->rng)) {
        w->rng[0] = (uint64_t)time(NULL) ^ ((uint64_t)id << 32);
        w->rng[1] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    }
    if (!w->rng[0] && !w->rng[1]) w->rng[1] = 1;
    return w;
}

moxy_worker_t *moxy_worker_new(moxy_conf_t *conf, int id)
{
    moxy_worker_t *w = moxy_worker_alloc(conf, id);
    if (!w || w->error[0]) return w;
    w->control_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->control_fd < 0) {
        snprintf(w->error, sizeof(w->error), "cannot create an event loop");
        return w;
    }
    w->nlisteners = conf->nlistens;
    w->listeners = calloc((size_t)conf->nlistens, sizeof(*w->listeners));
    for (int i = 0; i < conf->nlistens; i++) w->listeners[i].fd = -1;
    for (int i = 0; i < conf->nlistens; i++)
        if (open_listener(w, i) != MOXY_OK) return w;
    if (moxy_upstream_init_worker(w) != MOXY_OK) {
        snprintf(w->error, sizeof(w->error), "out of memory");
        return w;
    }
    event_assign(&w->control, w->base, w->control_fd, EV_READ | EV_PERSIST, control_cb, w);
    event_add(&w->control, NULL);
    event_assign(&w->flush_timer, w->base, -1, EV_PERSIST, flush_cb, w);
    struct timeval sec = {1, 0};
    event_add(&w->flush_timer, &sec);
    if (moxy_lua_worker_init(w) != MOXY_OK) return w;
    return w;
}

static void *worker_main(void *arg)
{
    moxy_worker_t *w = arg;
    accept_enable(w, 1);
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    /* Whatever is still open is cut: it is logged as aborted. */
    moxy_client_t *c;
    while ((c = LIST_FIRST(&w->clients))) moxy_client_close(c);
    moxy_client_end_detached(w);
    moxy_worker_buf_free_all(w);
    moxy_fetch_free_worker(w);
    moxy_alog_flush(&w->alog);
    moxy_upstream_free_worker(w);
    moxy_lua_worker_free(w);
    moxy_geoip_worker_free(w);
    moxy_pool_thread_cleanup();
    moxy_main_worker_exited();
    return NULL;
}

int moxy_worker_start(moxy_worker_t *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return MOXY_ERROR;
    w->started = 1;
    return MOXY_OK;
}

void moxy_worker_signal(moxy_worker_t *w, int command)
{
    uint64_t one = 1;
    atomic_fetch_or(&w->command, command);
    if (write(w->control_fd, &one, sizeof(one)) < 0)
        moxy_log_err("worker %d: cannot wake: %s", w->id, strerror(errno));
}

void moxy_worker_join_free(moxy_worker_t *w)
{
    if (!w) return;
    if (w->started) pthread_join(w->thread, NULL);
    else {
        moxy_upstream_free_worker(w);
        moxy_lua_worker_free(w);
        moxy_geoip_worker_free(w);
    }
    if (w->listeners) {
        close_listeners(w);
        free(w->listeners);
    }
    if (w->base) {
        event_del(&w->flush_timer);
        event_del(&w->control);
        event_base_free(w->base);
    }
    if (w->control_fd >= 0) close(w->control_fd);
    moxy_stats_free(w);
    free(w);
}

/*
 * workers.c -- worker threads: their generations' building and switching,
 * drain/stop on command from the main thread; see workers.h.
 */
#include "http/lifecycle.h"
#include "http/buffer_budget.h"
#include "ops/workers.h"
#include "ops/generation.h"
#include "api/geoip.h"
#include "http/http.h"
#include "http/request.h"
#include "http1/http1.h"
#include "proxy/http_fetch.h"
#include "http/lua_bridge.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_worker_t *w = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_log_warn("worker %d: drain deadline passed with %d connections open; closing them", w->id,
                  w->nconns);
    event_base_loopbreak(w->base);
}

static void wgen_free(moxy_wgen_t *g);
static moxy_wgen_t *wgen_build(moxy_worker_t *w, struct moxy_gen_s *gen);
static void wgen_switch(moxy_worker_t *w, moxy_wgen_t *g);

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
    /* a reload's commit or abort comes before the next reload's prepare */
    if (cmd & MOXY_WORKER_ABORT) {
        if (w->prepared) wgen_free(w->prepared);
        w->prepared = NULL;
    }
    if (cmd & MOXY_WORKER_COMMIT) {
        if (w->prepared && !w->draining) wgen_switch(w, w->prepared);
        else if (w->prepared) wgen_free(w->prepared);
        w->prepared = NULL;
    }
    if (cmd & MOXY_WORKER_PREPARE) {
        moxy_gen_t *gen = atomic_exchange(&w->pending, NULL);
        if (gen) {
            if (w->prepared) wgen_free(w->prepared);
            w->error[0] = '\0';
            w->prepared = w->draining ? NULL : wgen_build(w, gen);
            if (w->draining) snprintf(w->error, sizeof(w->error), "worker %d is draining", w->id);
            moxy_gen_release(gen); /* the prepared generation holds its own */
            atomic_store(&w->prepare_result, w->prepared ? 1 : -1);
            moxy_reload_worker_prepared();
        }
    }
    if ((cmd & MOXY_WORKER_DRAIN) && !w->draining) {
        w->draining = 1;
        moxy_listeners_close(w);
        moxy_modules_worker_drain(w);
        moxy_session_t *s = LIST_FIRST(&w->sessions), *next;
        for (; s; s = next) {
            next = LIST_NEXT(s, link);
            s->ops->drain(s);
        }
        if (w->nconns == 0) {
            event_base_loopexit(w->base, NULL);
            return;
        }
        struct timeval tv = moxy_timeval(w->g->conf->timeouts.drain);
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
    moxy_modules_worker_tick(w);
    moxy_buffer_budget_tick(w);
    /* event-loop lag: how late this one-second timer fires (a loop kept
     * busy by a slow callback fires it late) */
    long long now = moxy_mono_us();
    if (w->stats.timer_due_us) MOXY_STAT_SET(w->stats.loop_lag_us, MOXY_MAX(0, now - w->stats.timer_due_us));
    w->stats.timer_due_us = now + 1000000;
}

/* --- generations (see worker.h's moxy_wgen_t) --- */

static void wgen_free(moxy_wgen_t *g)
{
    if (g->retired && g->refs == 0)
        moxy_log(MOXY_LOG_DEBUG, NULL, "worker %d: generation %u: last request over, freed", g->w->id, g->gen->id);
    if (g->retired) {
        LIST_REMOVE(g, link);
        event_del(&g->deadline);
    }
    moxy_modules_wgen_free(g);
    if (g->gen) moxy_gen_release(g->gen);
    free(g);
}


/* w's part of gen: timeouts, pools, VM with the scripts loaded and
 * worker_init run.  NULL with w->error set when it cannot be made. */
static moxy_wgen_t *wgen_build(moxy_worker_t *w, moxy_gen_t *gen)
{
    moxy_wgen_t *g = moxy_wgen_alloc(w, gen->conf);
    if (!g) {
        snprintf(w->error, sizeof(w->error), "out of memory");
        return NULL;
    }
    moxy_gen_hold(gen);
    g->gen = gen;
    g->free = wgen_free;
    if (moxy_modules_wgen_init(g) != MOXY_OK) { /* w->error says why */
        wgen_free(g);
        return NULL;
    }
    return g;
}

/* The protocol that serves the connections of conf's listener i: HTTP/1
 * on every listener today (HTTP/2 and ALPN will choose here). */
static moxy_accept_fn listener_protocol(const moxy_conf_t *conf, int i)
{
    MOXY_UNUSED(conf);
    MOXY_UNUSED(i);
    return moxy_client_accept;
}

/* Past an old generation's drain deadline: what still runs on it is cut. */
static void wgen_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_wgen_t *g = arg;
    moxy_worker_t *w = g->w;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_log_warn("worker %d: generation %u: drain deadline passed with %d request%s or timer%s on it; "
                  "cutting them", w->id, g->gen->id, g->refs, g->refs == 1 ? "" : "s", g->refs == 1 ? "" : "s");
    g->refs++; /* g stays while the cut runs */
    moxy_session_t *s = LIST_FIRST(&w->sessions), *next;
    for (; s; s = next) {
        next = LIST_NEXT(s, link);
        s->ops->cut_gen(s, g);
    }
    moxy_req_end_detached(w, g);
    moxy_lua_wgen_cut(g);
    moxy_wgen_release(g);
}

/* The listeners of g->conf: those of addresses w listens on already keep
 * their socket (and its queue of connections), the others take the ones
 * generation.c opened; listeners g->conf does not have are closed.  Client
 * connections follow their listener to its new index, or, when it went
 * away, close after their current request. */
static void listeners_switch(moxy_worker_t *w, moxy_wgen_t *g)
{
    const moxy_conf_t *nc = g->conf, *oc = w->g->conf;
    moxy_listener_t *nl = calloc((size_t)nc->nlistens + 1, sizeof(*nl));
    int *map = calloc((size_t)w->nlisteners + 1, sizeof(int));
    if (!nl || !map) { /* keep listening as before: better than not at all */
        moxy_log_err("worker %d: out of memory switching listeners", w->id);
        free(nl);
        free(map);
        return;
    }
    int was = w->accepting;
    moxy_accept_enable(w, 0);
    for (int j = 0; j < w->nlisteners; j++) map[j] = -1;
    for (int i = 0; i < nc->nlistens; i++) {
        int fd = moxy_gen_take_listen_fd(g->gen, i, w->id);
        for (int j = 0; fd < 0 && j < w->nlisteners; j++) {
            if (w->listeners[j].fd >= 0 && moxy_addr_same(&oc->listens[j].addr, &nc->listens[i].addr)) {
                fd = w->listeners[j].fd;
                w->listeners[j].fd = -1;
                map[j] = i;
            }
        }
        if (fd < 0) moxy_log_err("worker %d: no socket for listener %s", w->id, nc->listens[i].addr.text);
        moxy_listener_assign(w, &nl[i], i, fd, listener_protocol(nc, i));
        nl[i].tls = g->gen->tls[i];
    }
    for (int j = 0; j < w->nlisteners; j++) {
        if (w->listeners[j].fd >= 0) close(w->listeners[j].fd); /* an address no longer listened on */
    }
    free(w->listeners);
    w->listeners = nl;
    w->nlisteners = nc->nlistens;
    moxy_session_t *s = LIST_FIRST(&w->sessions), *next;
    for (; s; s = next) {
        next = LIST_NEXT(s, link);
        s->listen_index = s->listen_index >= 0 ? map[s->listen_index] : -1;
        if (s->listen_index < 0) s->ops->drain(s);
    }
    free(map);
    if (was) moxy_accept_enable(w, 1);
}

/* w switches to its prepared generation g: new requests start on it. */
static void wgen_switch(moxy_worker_t *w, moxy_wgen_t *g)
{
    moxy_wgen_t *old = w->g;
    listeners_switch(w, g);
    moxy_modules_wgen_switch(old, g);
    moxy_lua_wgen_retire(old);
    w->g = g;
    old->retired = 1;
    LIST_INSERT_HEAD(&w->retired, old, link);
    evtimer_assign(&old->deadline, w->base, wgen_deadline_cb, old);
    struct timeval tv = moxy_timeval(g->conf->timeouts.drain);
    evtimer_add(&old->deadline, &tv);
    moxy_wgen_release(old);
    atomic_store(&w->gen_id, g->gen->id);
}

/* Free every generation of w (its loop is over: nothing runs on them). */
static void worker_free_wgens(moxy_worker_t *w)
{
    if (w->prepared) wgen_free(w->prepared);
    w->prepared = NULL;
    moxy_wgen_t *g;
    while ((g = LIST_FIRST(&w->retired))) wgen_free(g);
    if (w->g) wgen_free(w->g);
    w->g = NULL;
    moxy_gen_t *gen = atomic_exchange(&w->pending, NULL);
    if (gen) moxy_gen_release(gen);
}

/* --- workers --- */

moxy_worker_t *moxy_worker_new(moxy_gen_t *gen, int id)
{
    moxy_worker_t *w = moxy_worker_alloc(id);
    if (!w || w->error[0]) return w;
    w->control_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->control_fd < 0) {
        snprintf(w->error, sizeof(w->error), "cannot create an event loop");
        return w;
    }
    const moxy_conf_t *conf = gen->conf;
    w->nlisteners = conf->nlistens;
    w->listeners = calloc((size_t)conf->nlistens + 1, sizeof(*w->listeners));
    if (!w->listeners) {
        snprintf(w->error, sizeof(w->error), "out of memory");
        return w;
    }
    for (int i = 0; i < conf->nlistens; i++) {
        moxy_listener_assign(w, &w->listeners[i], i, moxy_gen_take_listen_fd(gen, i, id),
                             listener_protocol(gen->conf, i));
        w->listeners[i].tls = gen->tls[i];
    }
    event_assign(&w->control, w->base, w->control_fd, EV_READ | EV_PERSIST, control_cb, w);
    event_add(&w->control, NULL);
    event_assign(&w->flush_timer, w->base, -1, EV_PERSIST, flush_cb, w);
    struct timeval sec = {1, 0};
    event_add(&w->flush_timer, &sec);
    w->g = wgen_build(w, gen);
    atomic_store(&w->gen_id, gen->id);
    if (w->g) moxy_buffer_budget_tick(w); /* limits.buffer_memory from the start */
    return w;
}

static void *worker_main(void *arg)
{
    moxy_worker_t *w = arg;
    moxy_accept_enable(w, 1);
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    /* Whatever is still open is cut: it is logged as aborted. */
    moxy_session_t *s;
    while ((s = LIST_FIRST(&w->sessions))) s->ops->close(s);
    moxy_req_end_detached(w, NULL);
    moxy_modules_worker_free(w); /* before the spares: a module's jobs give back coders and buffers */
    moxy_worker_buf_free_all(w);
    moxy_alog_flush(&w->alog);
    worker_free_wgens(w);
    moxy_pool_thread_cleanup();
    moxy_main_worker_exited();
    return NULL;
}

int moxy_worker_start(moxy_worker_t *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return MOXY_ERROR;
    atomic_store_explicit(&w->started, 1, memory_order_release);
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
    if (atomic_load_explicit(&w->started, memory_order_acquire)) pthread_join(w->thread, NULL);
    else {
        moxy_modules_worker_free(w);
        worker_free_wgens(w);
    }
    if (w->listeners) {
        moxy_listeners_close(w);
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

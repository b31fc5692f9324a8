/*
 * worker.h -- worker threads.  Each owns an event_base, a LuaJIT VM, its own
 * SO_REUSEPORT listening sockets, its client connections and its idle origin
 * connections.  Nothing a worker touches on the request path is shared.
 *
 * The main thread talks to a worker only through moxy_worker_signal(), which
 * sets a flag and writes the worker's eventfd.  Event bases are created
 * without locks (EVENT_BASE_FLAG_NOLOCK): no other thread ever touches them,
 * so no event_add on the request path pays for a mutex.
 */
#ifndef MOXY_WORKER_H
#define MOXY_WORKER_H

#include "config.h"
#include "http-t.h"
#include "log.h"
#include "metrics.h"

#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>

enum {
    MOXY_WORKER_DRAIN = 1, /* stop accepting, finish in-flight requests, exit */
    MOXY_WORKER_STOP = 2,  /* exit now */
};

struct moxy_worker_s {
    int id;
    pthread_t thread;
    int started;                 /* the thread runs */
    moxy_conf_t *conf;
    struct event_base *base;
    lua_State *L;
    struct moxy_lua_mem_s *lua_mem; /* L's memory accounting (lua.memory), or NULL */
    atomic_llong lua_since;      /* when the running hook call started (ms, coarse monotonic); 0: none */
    int lua_body;                /* registry ref of runtime.coroutine_body, or LUA_NOREF (no hooks) */
    int lua_hooks[MOXY_PHASES];  /* hooks per phase (MOXY_PHASE_*) */
    int lua_phases;              /* phases with hooks: >1 keeps a request's txn between them */
    struct moxy_lua_co_s *co_free; /* idle hook coroutines, ready for the next request */
    int nco_free, co_free_cap;
    LIST_HEAD(, moxy_lua_timer_s) timers; /* moxy.timer timers armed or running */
    int ntimers;
    void *fetch;                 /* moxy.http's state (http_fetch.c), or NULL */
    void *geo;                   /* geoip.c: the database versions this worker looks up in, or NULL */
    LIST_HEAD(, moxy_client_s) detached; /* requests whose on_log hooks outlived their
                                             connection (each counts in nconns) */

    moxy_listener_t *listeners;  /* one per conf->listens */
    int nlisteners;
    int accepting;               /* listeners' events are added */
    atomic_int nconns;           /* open client connections (MOXY_STAT_ADD: its only writer is
                                    the worker; /status and /metrics read it) */
    LIST_HEAD(, moxy_client_s) clients;
#define MOXY_BUF_FREE_MAX 64
    struct evbuffer *buf_free[MOXY_BUF_FREE_MAX]; /* spare empty buffers (moxy_worker_buf_get) */
    int nbuf_free;

    moxy_pool_rt_t *pools;       /* one per conf->upstreams */
    moxy_stats_t stats;          /* what this worker counted (metrics.h), read by the admin listener */

    struct event control;        /* reads control_fd */
    int control_fd;              /* eventfd written by moxy_worker_signal */
    atomic_int command;          /* MOXY_WORKER_* bits */
    int draining;
    struct event drain_timer;
    struct event flush_timer;    /* flushes the access log every second */

    uint64_t rng[2];             /* xorshift128+ state for request ids */
    moxy_alog_buf_t alog;

    /* timeouts, converted once */
    struct timeval tv_client_header, tv_client_body, tv_client_send, tv_connect,
        tv_upstream, tv_keepalive;
    const struct timeval *ctv_keepalive; /* libevent common-timeout versions */
    const struct timeval *ctv_client_body, *ctv_client_send, *ctv_upstream;

    int exit_status;
    char error[256];             /* why the worker could not start */
};

/* A worker's memory for conf: its event base (without locks), timeouts and
 * request-id seed; no sockets, threads or VM (moxy.test's worker is just
 * this).  NULL when out of memory; w->error says why when the event base
 * could not be made. */
moxy_worker_t *moxy_worker_alloc(moxy_conf_t *conf, int id);

/* An empty evbuffer: a spare of w's, or a new one (NULL: out of memory).
 * Requests and connections take their buffers here instead of allocating
 * and freeing them each time. */
struct evbuffer *moxy_worker_buf_get(moxy_worker_t *w);

/* Give b back: kept as a spare when it is empty and w has room, else freed. */
void moxy_worker_buf_put(moxy_worker_t *w, struct evbuffer *b);

/* Free w's spares (the worker ends). */
void moxy_worker_buf_free_all(moxy_worker_t *w);

/* Create worker id for conf: opens its listening sockets and builds its Lua VM.
 * Returns NULL after logging why.  The worker does not run until started. */
moxy_worker_t *moxy_worker_new(moxy_conf_t *conf, int id);

/* Run the worker's loop on a new thread.  MOXY_OK or MOXY_ERROR. */
int moxy_worker_start(moxy_worker_t *w);

/* Ask a running worker to drain or stop (MOXY_WORKER_*); safe from any thread. */
void moxy_worker_signal(moxy_worker_t *w, int command);

/* Wait for the worker's thread to end, then free the worker. */
void moxy_worker_join_free(moxy_worker_t *w);

/* Called on each worker's thread as it ends (main.c): wakes the main thread. */
void moxy_main_worker_exited(void);

/* Called when a client connection closes: lets a paused accept resume and a
 * draining worker finish. */
void moxy_worker_conn_closed(moxy_worker_t *w);

#endif

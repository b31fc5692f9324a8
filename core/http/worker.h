/*
 * worker.h -- a worker as its requests see it: its event loop, spare
 * buffers, listeners and accept, counts, and its generations (moxy_wgen_t).
 * Each worker owns an event_base, a LuaJIT VM, its own SO_REUSEPORT
 * listening sockets, its client connections and its idle origin
 * connections.  Nothing a worker touches on the request path is shared.
 * Its thread, and what the main thread tells it, are ops/workers.h's.
 *
 * Event bases are created without locks (EVENT_BASE_FLAG_NOLOCK): no other
 * thread ever touches them, so no event_add on the request path pays for a
 * mutex.
 */
#ifndef MOXY_WORKER_H
#define MOXY_WORKER_H

#include "base/config.h"
#include "http/http-t.h"
#include "base/log.h"
#include "http/stats.h"

#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>

struct moxy_gen_s; /* generation.h */

/* A worker's part of one configuration generation: the Lua VM that runs the
 * generation's scripts, the worker's state of its pools, its timeouts.  A
 * request keeps the generation it started on to its end (r->g); the
 * connection's next request starts on the worker's current one.  A
 * generation is freed when the worker has moved on and its last request
 * (or running timer callback) is over, or at its drain deadline. */
struct moxy_wgen_s {
    moxy_worker_t *w;
    struct moxy_gen_s *gen;      /* the process-wide generation (a reference) */
    const moxy_conf_t *conf;     /* gen->conf */
    int refs;                    /* requests and running timer callbacks on it, + 1 while current */
    lua_State *L;
    struct moxy_lua_mem_s *lua_mem; /* L's memory accounting (lua.memory), or NULL */
    int lua_gc_roomy;            /* L's collector runs at GC_PAUSE_ROOMY (lua_bridge.c) */
    int lua_body;                /* registry ref of runtime.coroutine_body, or LUA_NOREF (no hooks) */
    int lua_hooks[MOXY_PHASES];  /* hooks per phase (MOXY_PHASE_*) */
    int lua_phases;              /* phases with hooks: >1 keeps a request's txn between them */
    struct moxy_lua_co_s *co_free; /* idle hook coroutines, ready for the next request */
    int nco_free, co_free_cap;
    LIST_HEAD(, moxy_lua_timer_s) timers; /* moxy.timer timers armed or running */
    int ntimers;
    moxy_pool_rt_t *pools;       /* one per conf->upstreams */

    /* timeouts, converted once */
    struct timeval tv_client_header, tv_client_body, tv_client_send, tv_connect,
        tv_upstream, tv_keepalive;
    const struct timeval *ctv_keepalive; /* libevent common-timeout versions */
    const struct timeval *ctv_client_body, *ctv_client_send, *ctv_upstream;

    void (*free)(struct moxy_wgen_s *g); /* what frees it when its last reference goes, or NULL */
    struct event deadline;       /* retired: past it, what still runs on it is cut */
    unsigned retired : 1;
    LIST_ENTRY(moxy_wgen_s) link; /* the worker's retired generations */
};

/* The most modules that may register (lifecycle.h); each has a slot in
 * every worker. */
#define MOXY_MODULES 16

struct moxy_worker_s {
    int id;
    pthread_t thread;
    atomic_int started;          /* the thread runs (w->thread is set once this is; the watchdog reads both) */
    struct event_base *base;
    moxy_wgen_t *g;              /* the current generation: new requests start on it */
    LIST_HEAD(, moxy_wgen_s) retired; /* older ones with requests still on them */
    _Atomic(struct moxy_gen_s *) pending; /* MOXY_WORKER_PREPARE's generation */
    moxy_wgen_t *prepared;       /* built for pending, waiting for COMMIT or ABORT */
    atomic_uint gen_id;          /* the generation its listeners belong to, once switched (the
                                    main thread reads the listeners only when all agree) */
    atomic_llong lua_since;      /* when the running hook call started (ms, coarse monotonic); 0: none */
    atomic_llong lua_budget_ms;  /* the running hook call's CPU budget */
    lua_State *lua_running;      /* the VM whose hook call runs (the budget's signal handler) */
    void *slots[MOXY_MODULES];   /* each registered module's own state (lifecycle.h), or NULL */
    LIST_HEAD(, moxy_req_s) detached; /* requests whose on_log hooks outlived their
                                          connection (each counts in nconns) */

    moxy_listener_t *listeners;  /* one per g->conf->listens */
    int nlisteners;
    int accepting;               /* listeners' events are added */
    atomic_int nconns;           /* open client connections (MOXY_STAT_ADD: its only writer is
                                    the worker; /status and /metrics read it) */
    LIST_HEAD(, moxy_session_s) sessions; /* client connections, any protocol */
    long long refused_log_ms;    /* when a refusal past limits.connections_per_client was last logged */
    /* out of descriptors (accept's EMFILE/ENFILE): one episode from the first
     * failure to the next accepted connection, logged at both ends */
    struct event accept_retry;   /* re-tries accept while out of descriptors */
    long long fd_paused_ms;      /* when the episode started (monotonic ms); 0: none */
    long long fd_back_ms;        /* when accept worked again in it, not failing since; 0: failing */
    unsigned fd_paused_hits;     /* accepts that failed in it */
    int fd_retry_ms;             /* the next retry's delay (backoff, 100 ms .. 1 s) */
    unsigned accept_retry_set : 1; /* accept_retry is assigned */
    unsigned refused_quiet;      /* refusals since, not logged */
    long long limit_log_ms;      /* when a pause at limits.connections was last logged */
    unsigned limit_quiet;        /* pauses since, not logged */
#define MOXY_BUF_FREE_MAX 64
    struct evbuffer *buf_free[MOXY_BUF_FREE_MAX]; /* spare empty buffers (moxy_worker_buf_get) */
    int nbuf_free;

    struct moxy_coders_s *coders; /* the compressors and decompressors it keeps (codec/coder.h), made
                                    at the first use */
    struct moxy_dialer_s *dialer; /* the resolver and idle connections of moxy.http, moxy.socket and
                                    moxy.redis (net/dial.h), made at the first use */

    moxy_stats_t stats;          /* what this worker counted (http/stats.h), read by the admin listener */

    struct event control;        /* reads control_fd */
    int control_fd;              /* eventfd written by moxy_worker_signal */
    atomic_int command;          /* MOXY_WORKER_* bits */
    atomic_int prepare_result;   /* 0: pending; 1: prepared; -1: failed (error says why) */
    int draining;
    struct event drain_timer;
    struct event flush_timer;    /* flushes the access log every second */

    uint64_t rng[2];             /* xorshift128+ state for request ids */
    moxy_alog_buf_t alog;

    int exit_status;
    char error[256];             /* why the worker or its prepared generation could not start */
};

/* A worker's memory: its event base (without locks) and request-id seed;
 * no sockets, threads or generation (moxy.test's worker is this and a bare
 * generation).  NULL when out of memory; w->error says why when the event
 * base could not be made. */
moxy_worker_t *moxy_worker_alloc(int id);

/* A generation of w for conf without VM or pools: timeouts only (moxy
 * test's; ops/workers.c adds the rest and sets g->free).  One reference.
 * NULL when out of memory. */
moxy_wgen_t *moxy_wgen_alloc(moxy_worker_t *w, const moxy_conf_t *conf);

/* Take / drop a reference to g (g's worker's thread).  The last one frees
 * it with g->free (ops/workers.c: its VM, its pools' idle connections, its
 * reference to the process's generation), or free() when that is NULL. */
static inline void moxy_wgen_hold(moxy_wgen_t *g)
{
    g->refs++;
}
void moxy_wgen_release(moxy_wgen_t *g);

/* An empty evbuffer: a spare of w's, or a new one (NULL: out of memory).
 * Requests and connections take their buffers here instead of allocating
 * and freeing them each time. */
struct evbuffer *moxy_worker_buf_get(moxy_worker_t *w);

/* Give b back: kept as a spare when it is empty and w has room, else freed. */
void moxy_worker_buf_put(moxy_worker_t *w, struct evbuffer *b);

/* Free w's spares: buffers, coders, the dialer (the worker ends, after its
 * modules: their dials are cancelled). */
void moxy_worker_buf_free_all(moxy_worker_t *w);

/* w's dialer (net/dial.h), made on the first call: NULL when out of memory. */
struct moxy_dialer_s *moxy_worker_dialer(moxy_worker_t *w);

/* Count a client connection of w under limits.connections_per_client (the
 * current generation's): its client address is family 4 or 6 at addr (other
 * families, and addresses in trusted_proxies, are not counted).  MOXY_OK:
 * let in (s->held says whether it took a place, given back with
 * moxy_conn_limit_leave once, however the connection ends); MOXY_DECLINED:
 * over the limit, counted in w's stats and logged (at most once a second per
 * worker, with how many went unlogged): the caller closes the connection. */
int moxy_worker_admit(moxy_worker_t *w, moxy_conn_slot_t *s, int family, const uint8_t *addr, int trusted);

/* Called when a client connection closes: lets a paused accept resume and a
 * draining worker finish.  Accept paused out of descriptors also resumes on
 * its own timer (descriptors may come back from elsewhere). */
void moxy_worker_conn_closed(moxy_worker_t *w);

/* How a listener's connections are served: takes the accepted socket fd of
 * the peer sa, which came in on listener listen_index (HTTP/1 today). */
typedef void (*moxy_accept_fn)(moxy_worker_t *w, int fd, const struct sockaddr *sa, int listen_index);

/* Listener i of w takes the listening socket fd (or fd < 0: none); its
 * connections go to accept. */
void moxy_listener_assign(moxy_worker_t *w, moxy_listener_t *l, int i, int fd, moxy_accept_fn accept);

/* Add (on) or remove w's listeners' events. */
void moxy_accept_enable(moxy_worker_t *w, int on);

/* Close w's listening sockets (they stop accepting). */
void moxy_listeners_close(moxy_worker_t *w);

#endif

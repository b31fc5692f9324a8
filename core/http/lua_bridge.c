/*
 * lua_bridge.c -- a worker's LuaJIT VM: loads the scripts through
 * lua/moxy/runtime.lua and runs their hooks in coroutines that may yield;
 * see lua_bridge.h.
 *
 * A hook coroutine runs runtime.coroutine_body: it runs one request's hooks
 * of one phase (or one timer callback) and yields DONE, then waits to be
 * resumed with the next.  Idle coroutines are kept per worker, so a hook
 * that never yields costs one lua_resume and no allocation: its task lives
 * on the C stack.  A yielding call (moxy.sleep, moxy.http, txn:read_body)
 * first asks C to start what it waits for -- which moves the running task
 * into stable memory (the request pool, or malloc for a timer's task) --
 * then yields WAIT; the task keeps its coroutine referenced from the
 * registry (so the GC leaves it alone) and is resumed with the request
 * pointer and the results when the event fires.  A coroutine that failed,
 * or whose client left while it was parked, is dropped and collected.
 */
#include "http/lifecycle.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "http/http.h"
#include "base/log.h"
#include "base/lua_vm.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

#define CO_FREE_MAX 1024   /* idle coroutines kept per worker */
#define TIMERS_MAX 65536   /* moxy.timer timers pending per worker */
#define PHASE_TIMER MOXY_PHASES /* runtime.TIMER: a timer's callback, not a phase */

enum { YIELD_DONE = 0, YIELD_WAIT = 1 }; /* runtime.DONE, runtime.WAIT */

/* A hook coroutine and its registry reference. */
struct moxy_lua_co_s {
    lua_State *co;
    int ref;
};

/* A moxy.timer timer: runtime.timers[id] holds its function. */
typedef struct moxy_lua_timer_s {
    moxy_wgen_t *g;             /* the generation whose VM holds its function */
    struct event ev;
    int id;
    double interval;            /* > 0: moxy.timer.every */
    moxy_lua_task_t *task;      /* its callback, parked, or NULL */
    unsigned running : 1;       /* its callback runs (maybe parked) */
    unsigned cancelled : 1;
    LIST_ENTRY(moxy_lua_timer_s) link;
} moxy_lua_timer_t;

/* One run of hooks: a request's phase, a timer's callback, or a
 * connection's on_tls_hello hooks. */
struct moxy_lua_task_s {
    moxy_wgen_t *g;             /* the generation whose VM runs it (on g->w) */
    struct moxy_lua_co_s co;
    moxy_req_t *r;              /* NULL: a timer's callback or a connection's hooks */
    moxy_lua_timer_t *timer;    /* the timer whose callback this is, or NULL */
    void *owner;                /* on_tls_hello: the connection (what the hooks get) */
    moxy_lua_task_t **slot;     /* ... where its owner keeps it while it is parked */
    void (*owner_done)(void *owner, int rc); /* ... told when its hooks are done */
    struct evbuffer *body_out;  /* on_body: where the hooks' result goes */
    struct event *sleep;        /* moxy.sleep's timer, once stable (after the task) */
    void *op;                   /* the operation it waits for, or NULL */
    void (*cancel)(void *op);
    unsigned stable : 1;        /* in the request pool or malloc'ed, not on the C stack */
    unsigned sleeping : 1;      /* waits for t->sleep; else, when op is set, for op */
};

static const char *const phase_names[MOXY_PHASES + 1] = {
    "on_request", "on_upstream", "on_upstream_request", "on_response",
    "on_body",    "on_log",      "on_error",            "on_cache_key", "on_tls_hello", "timer"};

/* The task whose coroutine runs on this thread, and the generation whose
 * worker_init runs. */
static _Thread_local moxy_lua_task_t *cur_task;
static _Thread_local moxy_wgen_t *cur_wgen;

/* The CPU budget of a hook call.  LuaJIT runs no debug hook inside compiled
 * code, so the functions of a script are kept out of the JIT (runtime.lua:
 * jit.off(chunk, true)) unless the configuration says `jit = true` for it;
 * moxy's own library stays compiled.  No hook is set while hooks behave: a
 * run only stamps its start in its worker (w->lua_since, the coarse
 * monotonic clock: a few ms of resolution, plenty for a budget of tens of
 * ms; a hook call runs without interruption on its worker, so wall time is
 * its CPU time unless the kernel preempts it).  A watchdog thread looks at
 * every worker a few times per budget; when a run is past its budget it
 * sends the worker's thread BUDGET_SIGNAL, whose handler sets a count hook
 * on the VM (lua_sethook is async-signal-safe: LuaJIT's own command line
 * stops scripts on SIGINT this way).  The hook raises at every instruction,
 * so a pcall in the script cannot swallow it, until the run ends. */
#define BUDGET_SIGNAL (SIGRTMIN + 1)

static _Thread_local moxy_worker_t *budget_w; /* the worker of this thread's runs */
static _Thread_local volatile sig_atomic_t budget_hooked;

static int64_t budget_ms(const moxy_worker_t *w)
{
    return atomic_load_explicit(&w->lua_budget_ms, memory_order_relaxed);
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    MOXY_UNUSED(ar);
    moxy_worker_t *w = budget_w;
    if (!w || atomic_load_explicit(&w->lua_since, memory_order_relaxed) == 0) return;
    /* name the line that was running: level 0 inside a hook (luaL_error's
     * level 1 would name its caller) */
    lua_Debug d;
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
        lua_pushfstring(L, "%s:%d: ", d.short_src, d.currentline);
    else
        lua_pushliteral(L, "");
    lua_pushfstring(L, "hook ran past its CPU budget of %d ms", (int)budget_ms(w));
    lua_concat(L, 2);
    lua_error(L);
}

/* BUDGET_SIGNAL, on a worker's thread: hook the VM if its run is still
 * past the budget (not a later run that started meanwhile). */
static void budget_signal(int sig)
{
    MOXY_UNUSED(sig);
    moxy_worker_t *w = budget_w;
    if (!w || !w->lua_running) return;
    int64_t since = atomic_load_explicit(&w->lua_since, memory_order_relaxed);
    if (since == 0 || moxy_mono_ms() - since < budget_ms(w)) return;
    budget_hooked = 1;
    lua_sethook(w->lua_running, budget_hook, LUA_MASKCOUNT, 1);
}

static void budget_arm(moxy_wgen_t *g)
{
    moxy_worker_t *w = g->w;
    if (!(g->conf->cpu_budget > 0)) return;
    budget_w = w;
    w->lua_running = g->L;
    atomic_store_explicit(&w->lua_budget_ms, (int64_t)(g->conf->cpu_budget * 1000 + 0.5), memory_order_relaxed);
    atomic_store_explicit(&w->lua_since, moxy_mono_ms(), memory_order_relaxed);
}

static void budget_disarm(moxy_wgen_t *g)
{
    moxy_worker_t *w = g->w;
    if (!(g->conf->cpu_budget > 0)) return;
    atomic_store_explicit(&w->lua_since, 0, memory_order_relaxed);
    if (budget_hooked) {
        MOXY_STAT_ADD(w->stats.budget_kills, 1);
        budget_hooked = 0;
        lua_sethook(g->L, NULL, 0, 0);
        moxy_lua_forget_broken_requires(g->L); /* a require it stopped loads again next time */
    }
}

static struct {
    pthread_t thread;
    int running;
    atomic_int stop;
    moxy_worker_t **workers;
    int n;
    atomic_long tick_ns;
} watchdog;

static void *watchdog_main(void *arg)
{
    MOXY_UNUSED(arg);
    while (!atomic_load(&watchdog.stop)) {
        struct timespec tick = {0, atomic_load(&watchdog.tick_ns)};
        nanosleep(&tick, NULL);
        int64_t now = moxy_mono_ms();
        for (int i = 0; i < watchdog.n; i++) {
            moxy_worker_t *w = watchdog.workers[i];
            int64_t since = atomic_load_explicit(&w->lua_since, memory_order_relaxed);
            if (since && atomic_load_explicit(&w->started, memory_order_acquire) && budget_ms(w) > 0 &&
                now - since >= budget_ms(w))
                pthread_kill(w->thread, BUDGET_SIGNAL);
        }
    }
    return NULL;
}

void moxy_lua_watchdog_tick(double budget)
{
    /* a few looks per budget: a runaway hook is stopped within ~1.25
     * budgets; without a budget, 40 looks a second cost nothing and a
     * reload may set one */
    double tick = budget > 0 ? budget / 4 : 0.025;
    if (tick < 0.001) tick = 0.001;
    if (tick > 0.025) tick = 0.025;
    atomic_store(&watchdog.tick_ns, (long)(tick * 1e9));
}

int moxy_lua_watchdog_start(moxy_worker_t **workers, int n, double budget)
{
    if (n == 0) return MOXY_OK;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = budget_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(BUDGET_SIGNAL, &sa, NULL) != 0) return MOXY_ERROR;
    moxy_lua_watchdog_tick(budget);
    watchdog.workers = workers;
    watchdog.n = n;
    atomic_store(&watchdog.stop, 0);
    if (pthread_create(&watchdog.thread, NULL, watchdog_main, NULL) != 0) return MOXY_ERROR;
    watchdog.running = 1;
    return MOXY_OK;
}

void moxy_lua_watchdog_stop(void)
{
    if (!watchdog.running) return;
    atomic_store(&watchdog.stop, 1);
    pthread_join(watchdog.thread, NULL);
    watchdog.running = 0;
}

/* Run runtime.run_once(name) with the runtime module at the top of L's
 * stack; returns the lua_pcall status (the error on the stack). */
static int run_once(lua_State *L, const char *name)
{
    lua_getfield(L, -1, "run_once");
    lua_pushstring(L, name);
    return lua_pcall(L, 1, 0, 0);
}

/* Push runtime.load(conf->scripts) results; returns the lua_pcall status.
 * Leaves the runtime module below the result (or the error). */
static int load_scripts(lua_State *L, const moxy_conf_t *conf)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moxy.runtime");
    if (lua_pcall(L, 1, 1, 0) != 0) return 1;
    lua_getfield(L, -1, "load");
    lua_createtable(L, conf->nscripts, 0);
    for (int i = 0; i < conf->nscripts; i++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, conf->scripts[i]);
        lua_setfield(L, -2, "path");
        lua_pushboolean(L, conf->scripts_jit[i]);
        lua_setfield(L, -2, "jit");
        if (conf->scripts_src && conf->scripts_src[i]) {
            lua_pushstring(L, conf->scripts_src[i]);
            lua_setfield(L, -2, "source");
        }
        lua_rawseti(L, -2, i + 1);
    }
    return lua_pcall(L, 1, 1, 0);
}

/* The collector's pace.  Lua starts a cycle when the heap has doubled
 * since the last one (pause 200); a worker's garbage is mostly one txn per
 * request, and the cycle's cost is the live heap's, so letting the heap
 * grow to 4x (pause 400) halves the collection work per request (~330
 * instructions of ~20,000: bench/callgrind.sh).  Near lua.memory, whose
 * allocations fail rather than wait for a cycle, the default comes back:
 * above a quarter of the limit 2x, below an eighth 4x again.  The pause
 * sets the next cycle's start when a cycle ends, so going to 2x ends one
 * at once (a full collection, once per switch): the start the last cycle
 * set at 4x may lie past the limit. */
#define GC_PAUSE_ROOMY 400
#define GC_PAUSE_TIGHT 200

static void gc_pace(moxy_wgen_t *g, size_t used)
{
    size_t limit = g->conf->lua_memory;
    int roomy = !limit || used < limit / 8 || (g->lua_gc_roomy && used <= limit / 4);
    if (roomy == g->lua_gc_roomy) return;
    g->lua_gc_roomy = roomy;
    lua_gc(g->L, LUA_GCSETPAUSE, roomy ? GC_PAUSE_ROOMY : GC_PAUSE_TIGHT);
    if (!roomy) lua_gc(g->L, LUA_GCCOLLECT, 0);
}

int moxy_lua_wgen_init(moxy_wgen_t *g)
{
    moxy_worker_t *w = g->w;
    LIST_INIT(&g->timers);
    g->lua_body = LUA_NOREF;
    g->L = moxy_lua_new(g->conf->dir);
    if (!g->L) {
        snprintf(w->error, sizeof(w->error), "cannot create a Lua VM");
        return MOXY_ERROR;
    }
    lua_State *L = g->L;
    if (g->conf->lua_memory && !(g->lua_mem = moxy_lua_memory_limit(L, g->conf->lua_memory))) {
        snprintf(w->error, sizeof(w->error), "out of memory");
        return MOXY_ERROR;
    }
    if (load_scripts(L, g->conf) != 0) {
        snprintf(w->error, sizeof(w->error), "%s", lua_tostring(L, -1));
        return MOXY_ERROR;
    }
    /* runtime.load returns the number of hooks of each phase */
    g->lua_phases = 0;
    for (int i = 0; i < MOXY_PHASES; i++) {
        lua_getfield(L, -1, phase_names[i]);
        g->lua_hooks[i] = (int)lua_tointeger(L, -1);
        g->lua_phases += g->lua_hooks[i] > 0;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    g->lua_phases -= g->lua_hooks[MOXY_PHASE_TLS_HELLO] > 0; /* a connection's, not a request's */
    /* every coroutine runs the same body: hooks, or a timer's callback */
    lua_getfield(L, -1, "coroutine_body");
    g->lua_body = luaL_ref(L, LUA_REGISTRYINDEX);
    moxy_wgen_t *outer = cur_wgen;
    cur_wgen = g; /* worker_init may start timers */
    int rc = run_once(L, "worker_init");
    cur_wgen = outer;
    if (rc != 0) {
        snprintf(w->error, sizeof(w->error), "%s", lua_tostring(L, -1));
        return MOXY_ERROR;
    }
    lua_settop(L, 0);
    gc_pace(g, 0);
    return MOXY_OK;
}

/* Stop what t waits for and drop its coroutine (the GC collects it). */
static void task_drop(moxy_lua_task_t *t)
{
    if (t->sleeping) event_del(t->sleep);
    t->sleeping = 0;
    if (t->op) t->cancel(t->op);
    t->op = NULL;
    luaL_unref(t->g->L, LUA_REGISTRYINDEX, t->co.ref);
}

static void timer_free(moxy_lua_timer_t *tm)
{
    event_del(&tm->ev);
    LIST_REMOVE(tm, link);
    tm->g->ntimers--;
    free(tm);
}

void moxy_lua_wgen_retire(moxy_wgen_t *g)
{
    moxy_lua_timer_t *tm = LIST_FIRST(&g->timers), *next;
    for (; tm; tm = next) {
        next = LIST_NEXT(tm, link);
        if (tm->running) tm->cancelled = 1; /* freed when its callback is over */
        else timer_free(tm);
    }
}

/* Free g's timers, dropping the callbacks parked in them.  The number of
 * them whose callback was running (each held a reference to g). */
static int timers_drop(moxy_wgen_t *g)
{
    int running = 0;
    moxy_lua_timer_t *tm;
    while ((tm = LIST_FIRST(&g->timers))) {
        if (tm->task) {
            task_drop(tm->task);
            free(tm->task);
        }
        running += tm->running;
        timer_free(tm);
    }
    return running;
}

void moxy_lua_wgen_cut(moxy_wgen_t *g)
{
    for (int n = timers_drop(g); n > 0; n--) moxy_wgen_release(g);
}

void moxy_lua_wgen_free(moxy_wgen_t *g)
{
    if (g->L) timers_drop(g); /* none runs: nothing holds g any more */
    free(g->co_free);
    g->co_free = NULL;
    g->nco_free = g->co_free_cap = 0;
    if (g->L && g->w->lua_running == g->L) g->w->lua_running = NULL;
    if (g->L) moxy_lua_close(g->L);
    g->L = NULL;
    if (cur_wgen == g) cur_wgen = NULL;
    g->lua_mem = NULL; /* freed with the VM */
}

/* A coroutine for a request: an idle one, or a new one with the body pushed. */
static void co_get(moxy_wgen_t *g, struct moxy_lua_co_s *out)
{
    if (g->nco_free > 0) {
        *out = g->co_free[--g->nco_free];
        return;
    }
    lua_State *L = g->L;
    out->co = lua_newthread(L);
    out->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->lua_body);
    lua_xmove(L, out->co, 1);
}

/* The coroutine finished a run cleanly: keep it for the next one. */
static void co_put(moxy_wgen_t *g, struct moxy_lua_co_s co)
{
    if (g->nco_free == g->co_free_cap && g->co_free_cap < CO_FREE_MAX) {
        int cap = g->co_free_cap ? g->co_free_cap * 2 : 16;
        struct moxy_lua_co_s *n = realloc(g->co_free, (size_t)cap * sizeof(*n));
        if (n) {
            g->co_free = n;
            g->co_free_cap = cap;
        }
    }
    if (g->nco_free < g->co_free_cap) g->co_free[g->nco_free++] = co;
    else luaL_unref(g->L, LUA_REGISTRYINDEX, co.ref);
}

static void task_sleep_cb(evutil_socket_t fd, short what, void *arg);
static void lua_abort(moxy_req_t *r);

/* The running task, moved to stable memory first if it is still on the C
 * stack (an operation is about to keep a pointer to it).  NULL outside a
 * task, or when out of memory. */
static moxy_lua_task_t *task_current(void)
{
    moxy_lua_task_t *t = cur_task, *s;
    if (!t || t->stable) return t;
    /* the task and its sleep timer in one piece; the stack copy stays small
     * because a hook that never yields never needs the timer */
    size_t n = sizeof(*s) + sizeof(struct event);
    s = t->r ? moxy_palloc(&t->r->mem, n) : malloc(n);
    if (!s) return NULL;
    *s = *t;
    s->stable = 1;
    s->sleep = (struct event *)(s + 1);
    evtimer_assign(s->sleep, s->g->w->base, task_sleep_cb, s);
    cur_task = s;
    return s;
}

/* The request pointer as resumed coroutines receive it (a connection's
 * for on_tls_hello hooks, 0 for a timer's callback).  It travels as a
 * number: ffi.cast of a light userdata is not compiled by LuaJIT's JIT
 * (NYI), a number to pointer cast is. */
static void push_ptr(lua_State *co, const void *p)
{
    lua_pushnumber(co, (lua_Number)(uintptr_t)p);
}

static void push_task_ptr(const moxy_lua_task_t *t)
{
    push_ptr(t->co.co, t->r ? (const void *)t->r : t->owner);
}

static void log_task_error(moxy_lua_task_t *t, const char *msg)
{
    int phase = t->r ? t->r->hook_phase : t->timer ? PHASE_TIMER : MOXY_PHASE_TLS_HELLO;
    MOXY_STAT_ADD(t->g->w->stats.lua_errors, 1);
    moxy_log(MOXY_LOG_ERR, t->r ? t->r->id : NULL, "%s: %s", phase_names[phase], msg);
}

/* Resume t's coroutine (nargs values pushed) and act on what it yields:
 * MOXY_OK / MOXY_DONE when the run is over, MOXY_AGAIN when it waits (t is
 * then stable: *tp points to it), MOXY_ERROR when it failed (logged). */
static int co_resume(moxy_lua_task_t **tp, int nargs)
{
    moxy_lua_task_t *t = *tp;
    moxy_wgen_t *g = t->g;
    moxy_req_t *r = t->r;
    lua_State *c = t->co.co;
    moxy_lua_task_t *outer = cur_task;
    cur_task = t;
    budget_arm(g);
    if (g->lua_mem) g->lua_mem->enforce = 1;
    int st = lua_resume(c, nargs);
    size_t used = 0;
    if (g->lua_mem) {
        g->lua_mem->enforce = 0;
        used = g->lua_mem->used > 0 ? (size_t)g->lua_mem->used : 0;
    }
    budget_disarm(g);
    if (g->lua_mem) gc_pace(g, used);
    t = *tp = cur_task; /* task_current may have moved it */
    cur_task = outer;
    if (st == LUA_YIELD && lua_tointeger(c, 1) == YIELD_DONE && lua_gettop(c) >= 3) {
        int answered = lua_toboolean(c, 2);
        if (r) {
            if (t->body_out) {
                size_t n;
                const char *s = lua_tolstring(c, 4, &n);
                if (s && n) evbuffer_add(t->body_out, s, n);
            }
            /* keep the txn (and its ctx) for the request's later phases:
             * other phases' hooks, or this one's again (on_body's next
             * piece, on_upstream's retry) */
            if (!r->txn_ref && (g->lua_phases > 1 || r->hook_phase == MOXY_PHASE_BODY ||
                                r->hook_phase == MOXY_PHASE_UPSTREAM) &&
                lua_istable(c, 3)) {
                lua_pushvalue(c, 3);
                lua_xmove(c, g->L, 1);
                r->txn_ref = luaL_ref(g->L, LUA_REGISTRYINDEX);
            }
        }
        lua_settop(c, 0);
        co_put(g, t->co);
        return answered && r && r->local ? MOXY_DONE : MOXY_OK;
    }
    if (st == LUA_YIELD && lua_tointeger(c, 1) == YIELD_WAIT && (t->sleeping || t->op)) {
        lua_settop(c, 0);
        if (r) r->hook = t;
        else if (t->timer) t->timer->task = t;
        else *t->slot = t;
        return MOXY_AGAIN;
    }
    /* an error, or a yield that did not come from moxy's API */
    if (st == LUA_YIELD) {
        log_task_error(t, "a hook yielded outside moxy's API (coroutine.yield in a hook?)");
    } else if (st == LUA_ERRMEM) {
        char msg[128];
        snprintf(msg, sizeof(msg), "the worker's Lua memory limit was reached (lua.memory = %zu MiB)",
                 g->conf->lua_memory >> 20);
        log_task_error(t, msg);
    } else {
        log_task_error(t, lua_isstring(c, -1) ? lua_tostring(c, -1) : "(error object is not a string)");
    }
    task_drop(t);
    /* what the failed hook held is garbage now: give it back before the
     * next hook needs the room (gc_pace's collection above, if it ran one,
     * came while the failed run's coroutine still held it) */
    if (g->conf->lua_memory && used > g->conf->lua_memory / 2) lua_gc(g->L, LUA_GCCOLLECT, 0);
    if (r) {
        r->local = 0; /* a half-made answer is not sent */
        if (r->hook_phase < MOXY_PHASE_BODY) r->resp_headers.n = 0;
    }
    return MOXY_ERROR;
}

/* Start a run of phase's hooks for r: coroutine, request, phase, txn. */
static void task_start(moxy_lua_task_t *t, moxy_req_t *r, int phase)
{
    moxy_wgen_t *g = r->g;
    /* hooks of an earlier phase still parked (the request failed or was
     * answered meanwhile: its origin failed, its body timed out) are moot */
    lua_abort(r);
    t->g = g;
    t->r = r;
    co_get(g, &t->co);
    r->hook_phase = phase;
    push_ptr(t->co.co, r);
    lua_pushinteger(t->co.co, phase);
    if (r->txn_ref > 0) {
        lua_rawgeti(g->L, LUA_REGISTRYINDEX, r->txn_ref);
        lua_xmove(g->L, t->co.co, 1);
    } else {
        lua_pushnil(t->co.co);
    }
}

int moxy_lua_run(moxy_req_t *r, int phase, moxy_hooks_done_fn done)
{
    if (r->g->lua_hooks[phase] == 0) return MOXY_OK;
    /* a peer's fill request (cache_shard.c): the peer ran its hooks, the
     * request as it came is what its origin gets, the response as stored
     * is what it gets back; only the log is this node's */
    if (r->shard_fill && phase != MOXY_PHASE_LOG) return MOXY_OK;
    /* what the hooks may leave on r (a parked run, the txn) goes with it */
    moxy_req_cleanup_add(r, moxy_lua_req_done);
    moxy_lua_task_t task = {0}, *t = &task;
    task_start(t, r, phase);
    r->hooks_done = done;
    return co_resume(&t, 3);
}

int moxy_lua_run_body(moxy_req_t *r, const char *data, size_t len, int eof, struct evbuffer *out,
                      moxy_hooks_done_fn done)
{
    moxy_req_cleanup_add(r, moxy_lua_req_done);
    moxy_lua_task_t task = {0}, *t = &task;
    task_start(t, r, MOXY_PHASE_BODY);
    r->hooks_done = done;
    t->body_out = out;
    lua_pushlstring(t->co.co, data, len);
    lua_pushboolean(t->co.co, eof);
    return co_resume(&t, 5);
}

static void timer_done(moxy_lua_timer_t *tm);

int moxy_lua_run_hello(moxy_wgen_t *g, void *owner, moxy_lua_task_t **slot, void (*done)(void *owner, int rc))
{
    moxy_lua_task_t task = {0}, *t = &task;
    t->g = g;
    t->owner = owner;
    t->slot = slot;
    t->owner_done = done;
    co_get(g, &t->co);
    push_ptr(t->co.co, owner);
    lua_pushinteger(t->co.co, MOXY_PHASE_TLS_HELLO);
    lua_pushnil(t->co.co);
    int rc = co_resume(&t, 3);
    if (rc == MOXY_AGAIN) {
        moxy_wgen_hold(g); /* a parked run keeps its generation */
        return MOXY_AGAIN;
    }
    if (t->stable) free(t);
    return rc == MOXY_DONE ? MOXY_OK : rc;
}

void moxy_lua_hello_drop(moxy_lua_task_t *t)
{
    moxy_wgen_t *g = t->g;
    *t->slot = NULL;
    task_drop(t);
    free(t);
    moxy_wgen_release(g);
}

/* Resume a parked task (its request pointer and nargs - 1 results pushed)
 * and, when its run is over, tell its owner. */
static void task_resume_parked(moxy_lua_task_t *t, int nargs)
{
    moxy_req_t *r = t->r;
    if (!r && t->timer) {
        moxy_lua_timer_t *tm = t->timer;
        tm->task = NULL;
        if (co_resume(&t, nargs) != MOXY_AGAIN) {
            free(t);
            timer_done(tm);
        }
        return;
    }
    if (!r) { /* a connection's on_tls_hello hooks */
        *t->slot = NULL;
        int rc = co_resume(&t, nargs);
        if (rc == MOXY_AGAIN) return;
        moxy_wgen_t *g = t->g;
        void *owner = t->owner;
        void (*done)(void *, int) = t->owner_done;
        free(t);
        done(owner, rc == MOXY_DONE ? MOXY_OK : rc);
        moxy_wgen_release(g);
        return;
    }
    /* a detached request (on_log) has no connection to hold: its end frees it */
    const moxy_stream_ops_t *s = r->stream;
    void *ctx = r->hook_phase == MOXY_PHASE_LOG ? NULL : r->stream_ctx;
    if (ctx) s->hold(ctx);
    r->hook = NULL;
    int rc = co_resume(&t, nargs);
    if (rc != MOXY_AGAIN) r->hooks_done(r, rc);
    if (ctx) s->release(ctx);
}

static void task_sleep_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_lua_task_t *t = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    t->sleeping = 0;
    push_task_ptr(t);
    task_resume_parked(t, 1);
}

void moxy_lua_task_wait(moxy_lua_task_t *t, void *op, void (*cancel)(void *op))
{
    t->op = op;
    t->cancel = cancel;
}

lua_State *moxy_lua_task_thread(moxy_lua_task_t *t)
{
    return t->co.co;
}

void moxy_lua_task_wake(moxy_lua_task_t *t, int nresults)
{
    t->op = NULL;
    push_task_ptr(t);
    lua_insert(t->co.co, -(nresults + 1));
    task_resume_parked(t, nresults + 1);
}

moxy_req_t *moxy_lua_task_request(const moxy_lua_task_t *t)
{
    return t->r;
}

moxy_worker_t *moxy_lua_task_worker(const moxy_lua_task_t *t)
{
    return t->g->w;
}

moxy_wgen_t *moxy_lua_task_wgen(const moxy_lua_task_t *t)
{
    return t->g;
}

/* The generation whose Lua runs: the running task's, or the one whose
 * worker_init runs (on its worker's thread, or the main thread before the
 * worker starts). */
static moxy_wgen_t *lua_wgen(void)
{
    return cur_task ? cur_task->g : cur_wgen;
}

static _Thread_local const moxy_conf_t *check_conf; /* moxy_lua_check_scripts', or moxy test's */

void moxy_lua_use_conf(const moxy_conf_t *conf)
{
    check_conf = conf;
}

moxy_worker_t *moxy_lua_worker(void)
{
    moxy_wgen_t *g = lua_wgen();
    return g ? g->w : NULL;
}

const moxy_conf_t *moxy_lua_conf(void)
{
    moxy_wgen_t *g = lua_wgen();
    return g ? g->conf : check_conf;
}

/* The running task, stable, for an FFI call that starts an operation
 * (moxy.http, the request body...).  NULL outside hooks and timers. */
moxy_lua_task_t *moxy_lua_current_task(void)
{
    return task_current();
}

void moxy_lua_req_done(moxy_req_t *r)
{
    lua_abort(r);
    if (r->txn_ref > 0) luaL_unref(r->g->L, LUA_REGISTRYINDEX, r->txn_ref);
    r->txn_ref = 0;
}

void moxy_lua_req_fork(moxy_req_t *r2, const moxy_req_t *r)
{
    if (r->txn_ref <= 0 || r2->g != r->g) return;
    moxy_req_cleanup_add(r2, moxy_lua_req_done);
    lua_State *L = r->g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->txn_ref);
    lua_createtable(L, 0, 2);
    if (lua_getmetatable(L, -2)) lua_setmetatable(L, -2); /* txn.lua's Txn */
    lua_pushliteral(L, "ctx");
    lua_pushliteral(L, "ctx");
    lua_rawget(L, -4);
    lua_rawset(L, -3); /* nil when r's hooks never touched txn.ctx: the new one makes its own */
    r2->txn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
}

/* Cancel what r's parked hooks wait for and drop their coroutine. */
static void lua_abort(moxy_req_t *r)
{
    moxy_lua_task_t *t = r->hook;
    if (!t) return;
    task_drop(t);
    r->hook = NULL;
}

/* --- moxy.sleep and moxy.timer (FFI exports, lua/moxy/runtime.lua) --- */

EXPORT int moxy_ffi_sleep(double secs)
{
    moxy_lua_task_t *t = task_current();
    if (!t) return MOXY_DECLINED;
    struct timeval tv = moxy_timeval(secs > 1e7 ? 1e7 : secs);
    evtimer_add(t->sleep, &tv);
    t->sleeping = 1;
    return MOXY_OK;
}

static void timer_arm(moxy_lua_timer_t *tm, double secs)
{
    struct timeval tv = moxy_timeval(secs > 1e7 ? 1e7 : secs);
    evtimer_add(&tm->ev, &tv);
}

/* The timer's callback is over: again after its interval, or gone; its
 * generation may go too. */
static void timer_done(moxy_lua_timer_t *tm)
{
    moxy_wgen_t *g = tm->g;
    tm->running = 0;
    if (tm->interval > 0 && !tm->cancelled) timer_arm(tm, tm->interval);
    else timer_free(tm);
    moxy_wgen_release(g);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_lua_timer_t *tm = arg;
    moxy_wgen_t *g = tm->g;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    tm->running = 1;
    moxy_wgen_hold(g); /* a running callback keeps its generation */
    moxy_lua_task_t task = {0}, *t = &task;
    t->g = g;
    t->timer = tm;
    co_get(g, &t->co);
    lua_pushnumber(t->co.co, 0);
    lua_pushinteger(t->co.co, PHASE_TIMER);
    lua_pushinteger(t->co.co, tm->id);
    if (co_resume(&t, 3) != MOXY_AGAIN) {
        if (t->stable) free(t);
        timer_done(tm);
    }
}

EXPORT int moxy_ffi_timer_add(double delay, double interval, int id)
{
    moxy_wgen_t *g = lua_wgen();
    if (!g) return MOXY_DECLINED;
    if (g->ntimers >= TIMERS_MAX) return MOXY_ERROR;
    if (g->retired) return MOXY_OK; /* a retired generation's timers would never run */
    moxy_lua_timer_t *tm = calloc(1, sizeof(*tm));
    if (!tm) return MOXY_ERROR;
    tm->g = g;
    tm->id = id;
    tm->interval = interval;
    evtimer_assign(&tm->ev, g->w->base, timer_cb, tm);
    LIST_INSERT_HEAD(&g->timers, tm, link);
    g->ntimers++;
    timer_arm(tm, delay);
    return MOXY_OK;
}

EXPORT int moxy_ffi_timer_cancel(int id)
{
    moxy_wgen_t *g = lua_wgen();
    if (!g) return MOXY_DECLINED;
    moxy_lua_timer_t *tm;
    LIST_FOREACH(tm, &g->timers, link) {
        if (tm->id != id || tm->cancelled) continue;
        if (tm->running) tm->cancelled = 1; /* freed when its callback is over */
        else timer_free(tm);
        return MOXY_OK;
    }
    return MOXY_DECLINED;
}

/* The configuration whose scripts the main thread loads (moxy.watch records
 * into it), or NULL. */
static _Thread_local moxy_conf_t *watch_conf;

EXPORT int moxy_ffi_watch(const char *path, size_t len)
{
    moxy_conf_t *c = watch_conf;
    if (!c) return MOXY_OK;
    for (int i = 0; i < c->nwatched; i++)
        if (strlen(c->watched[i]) == len && memcmp(c->watched[i], path, len) == 0) return MOXY_OK;
    char **n = realloc(c->watched, (size_t)(c->nwatched + 1) * sizeof(*n));
    if (!n) return MOXY_ERROR;
    c->watched = n;
    if (!(n[c->nwatched] = strndup(path, len))) return MOXY_ERROR;
    c->nwatched++;
    return MOXY_OK;
}

int moxy_lua_check_scripts(const moxy_conf_t *conf, FILE *err)
{
    lua_State *L = moxy_lua_new(conf->dir);
    if (!L) {
        fprintf(err, "moxy: cannot create a Lua VM\n");
        return MOXY_ERROR;
    }
    int rc = MOXY_OK;
    check_conf = conf;
    watch_conf = (moxy_conf_t *)conf; /* still the loader's: nothing else reads it yet */
    if (load_scripts(L, conf) != 0) {
        fprintf(err, "%s\n", lua_tostring(L, -1));
        rc = MOXY_ERROR;
    } else {
        lua_pop(L, 1); /* the counts: the runtime module is on top again */
        if (run_once(L, "init") != 0) {
            fprintf(err, "%s\n", lua_tostring(L, -1));
            rc = MOXY_ERROR;
        }
    }
    check_conf = NULL;
    watch_conf = NULL;
    moxy_lua_close(L);
    return rc;
}

/* A reload: the watchdog's tick follows the new CPU budget. */
static int lua_reload(moxy_conf_t *conf, struct event_base *base)
{
    MOXY_UNUSED(base);
    moxy_lua_watchdog_tick(conf->cpu_budget);
    return MOXY_OK;
}

moxy_module_t moxy_lua_module = {
    .name = "lua",
    .reload = lua_reload,
    .wgen_init = moxy_lua_wgen_init,
    .wgen_free = moxy_lua_wgen_free,
};

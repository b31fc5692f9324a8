/*
 * lua_bridge.c -- a worker's LuaJIT VM: loads the scripts through
 * lua/moxy/runtime.lua and runs their hooks in coroutines that may yield;
 * see lua_bridge.h.
 *
 * A hook coroutine runs runtime.coroutine_body: it runs one request's hooks
 * and yields DONE, then waits to be resumed with the next request.  Idle
 * coroutines are kept per worker, so a hook that never yields costs one
 * lua_resume and no allocation.  A hook that calls moxy.sleep yields SLEEP:
 * the request keeps its coroutine (referenced from the registry so the GC
 * leaves it alone), a timer is armed, and the coroutine is resumed with the
 * request pointer when it fires.  A coroutine that failed, or whose client
 * left while it was parked, is dropped and collected.
 */
#include "lua_bridge.h"
#include "http.h"
#include "log.h"
#include "lua_vm.h"
#include "worker.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CO_FREE_MAX 1024 /* idle coroutines kept per worker */

enum { YIELD_DONE = 0, YIELD_SLEEP = 1 }; /* runtime.DONE, runtime.SLEEP */

/* A hook coroutine and its registry reference. */
struct moxy_lua_co_s {
    lua_State *co;
    int ref;
};

/* The hooks of a request parked on an event (r->hook), in the request pool. */
typedef struct {
    struct moxy_lua_co_s co;
    struct event timer;
    moxy_req_t *r;
} hook_state_t;

/* The CPU budget of a hook call.  LuaJIT runs no debug hook inside compiled
 * code, so the functions of a script are kept out of the JIT (runtime.lua:
 * jit.off(chunk, true)) unless the configuration says `jit = true` for it;
 * moxy's own library stays compiled.  A count hook every BUDGET_COUNT VM
 * instructions compares the coarse monotonic clock (vDSO, a few ms of
 * resolution: plenty for a budget of tens of ms) with the call's deadline (a
 * hook call runs without interruption on its worker, so wall time is its
 * CPU time unless the kernel preempts it).  Past the deadline the hook
 * raises at every instruction, so a pcall in the script cannot swallow it. */
#define BUDGET_COUNT 1000

static _Thread_local struct timespec budget_deadline;
static _Thread_local int budget_armed;
static _Thread_local double budget_secs;

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    MOXY_UNUSED(ar);
    if (!budget_armed) return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    if (now.tv_sec < budget_deadline.tv_sec ||
        (now.tv_sec == budget_deadline.tv_sec && now.tv_nsec < budget_deadline.tv_nsec))
        return;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    /* name the line that was running: level 0 inside a hook (luaL_error's
     * level 1 would name its caller) */
    lua_Debug d;
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0)
        lua_pushfstring(L, "%s:%d: ", d.short_src, d.currentline);
    else
        lua_pushliteral(L, "");
    lua_pushfstring(L, "hook ran past its CPU budget of %d ms", (int)(budget_secs * 1000 + 0.5));
    lua_concat(L, 2);
    lua_error(L);
}

static void budget_arm(moxy_worker_t *w)
{
    budget_secs = w->conf->cpu_budget;
    if (!(budget_secs > 0)) return;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &budget_deadline);
    double s = budget_secs;
    budget_deadline.tv_sec += (time_t)s;
    budget_deadline.tv_nsec += (long)((s - floor(s)) * 1e9);
    if (budget_deadline.tv_nsec >= 1000000000L) {
        budget_deadline.tv_sec++;
        budget_deadline.tv_nsec -= 1000000000L;
    }
    budget_armed = 1;
}

static void budget_disarm(moxy_worker_t *w)
{
    if (!budget_armed) return;
    budget_armed = 0;
    lua_sethook(w->L, budget_hook, LUA_MASKCOUNT, BUDGET_COUNT);
}

/* Run runtime.run_once(name) with the runtime module at the top of L's
 * stack; returns the lua_pcall status (the error on the stack). */
static int run_once(lua_State *L, const char *name)
{
    lua_getfield(L, -1, "run_once");
    lua_pushstring(L, name);
    return lua_pcall(L, 1, 0, 0);
}

static const char *const phase_names[MOXY_PHASES] = {"on_request", "on_response", "on_error"};

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
        lua_rawseti(L, -2, i + 1);
    }
    return lua_pcall(L, 1, 1, 0);
}

int moxy_lua_worker_init(moxy_worker_t *w)
{
    w->L = moxy_lua_new(w->conf->dir);
    if (!w->L) {
        snprintf(w->error, sizeof(w->error), "cannot create a Lua VM");
        return MOXY_ERROR;
    }
    lua_State *L = w->L;
    if (load_scripts(L, w->conf) != 0) {
        snprintf(w->error, sizeof(w->error), "%s", lua_tostring(L, -1));
        return MOXY_ERROR;
    }
    /* runtime.load returns the number of hooks of each phase */
    int nhooks = 0;
    for (int i = 0; i < MOXY_PHASES; i++) {
        lua_getfield(L, -1, phase_names[i]);
        w->lua_hooks[i] = (int)lua_tointeger(L, -1);
        nhooks += w->lua_hooks[i];
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (run_once(L, "worker_init") != 0) {
        snprintf(w->error, sizeof(w->error), "%s", lua_tostring(L, -1));
        return MOXY_ERROR;
    }
    if (w->conf->cpu_budget > 0) lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_COUNT);
    w->lua_body = LUA_NOREF;
    if (nhooks > 0) {
        lua_getfield(L, -1, "coroutine_body");
        w->lua_body = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, 0);
    return MOXY_OK;
}

void moxy_lua_worker_free(moxy_worker_t *w)
{
    free(w->co_free);
    w->co_free = NULL;
    w->nco_free = w->co_free_cap = 0;
    if (w->L) lua_close(w->L);
    w->L = NULL;
}

/* A coroutine for a request: an idle one, or a new one with the body pushed. */
static void co_get(moxy_worker_t *w, struct moxy_lua_co_s *out)
{
    if (w->nco_free > 0) {
        *out = w->co_free[--w->nco_free];
        return;
    }
    lua_State *L = w->L;
    out->co = lua_newthread(L);
    out->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->lua_body);
    lua_xmove(L, out->co, 1);
}

/* The coroutine finished a request cleanly: keep it for the next one. */
static void co_put(moxy_worker_t *w, struct moxy_lua_co_s co)
{
    if (w->nco_free == w->co_free_cap && w->co_free_cap < CO_FREE_MAX) {
        int cap = w->co_free_cap ? w->co_free_cap * 2 : 16;
        struct moxy_lua_co_s *n = realloc(w->co_free, (size_t)cap * sizeof(*n));
        if (n) {
            w->co_free = n;
            w->co_free_cap = cap;
        }
    }
    if (w->nco_free < w->co_free_cap) w->co_free[w->nco_free++] = co;
    else luaL_unref(w->L, LUA_REGISTRYINDEX, co.ref);
}

static void hook_timer_cb(evutil_socket_t fd, short what, void *arg);

/* Resume co for r with nargs values on its stack and act on what it yields. */
static int co_resume(moxy_req_t *r, struct moxy_lua_co_s co, int nargs)
{
    moxy_worker_t *w = r->c->w;
    lua_State *c = co.co;
    budget_arm(w);
    int st = lua_resume(c, nargs);
    budget_disarm(w);
    if (st == LUA_YIELD && lua_tointeger(c, 1) == YIELD_DONE && lua_gettop(c) >= 3) {
        int answered = lua_toboolean(c, 2);
        /* keep the txn (and its ctx) for the request's later phases */
        if (r->hook_phase == MOXY_PHASE_REQUEST &&
            (w->lua_hooks[MOXY_PHASE_RESPONSE] > 0 || w->lua_hooks[MOXY_PHASE_ERROR] > 0) &&
            !r->txn_ref && lua_istable(c, 3)) {
            lua_xmove(c, w->L, 1);
            r->txn_ref = luaL_ref(w->L, LUA_REGISTRYINDEX);
        }
        lua_settop(c, 0);
        co_put(w, co);
        return answered && r->local ? MOXY_DONE : MOXY_OK;
    }
    if (st == LUA_YIELD && lua_tointeger(c, 1) == YIELD_SLEEP) {
        double secs = lua_tonumber(c, 2);
        lua_settop(c, 0);
        hook_state_t *h = r->hook;
        if (!h) {
            h = moxy_palloc(&r->c->pool, sizeof(*h));
            if (!h) {
                luaL_unref(w->L, LUA_REGISTRYINDEX, co.ref);
                moxy_log(MOXY_LOG_ERR, r->id, "%s: out of memory", phase_names[r->hook_phase]);
                return MOXY_ERROR;
            }
            h->r = r;
            evtimer_assign(&h->timer, w->base, hook_timer_cb, h);
            r->hook = h;
        }
        h->co = co;
        struct timeval tv;
        if (!(secs > 0)) secs = 0;
        if (secs > 1e7) secs = 1e7;
        tv.tv_sec = (time_t)secs;
        tv.tv_usec = (suseconds_t)((secs - floor(secs)) * 1e6);
        evtimer_add(&h->timer, &tv);
        return MOXY_AGAIN;
    }
    /* an error, or a yield that did not come from moxy's API */
    if (st == LUA_YIELD)
        moxy_log(MOXY_LOG_ERR, r->id, "%s: a hook yielded outside moxy's API (coroutine.yield in a hook?)",
                 phase_names[r->hook_phase]);
    else
        moxy_log(MOXY_LOG_ERR, r->id, "%s: %s", phase_names[r->hook_phase],
                 lua_isstring(c, -1) ? lua_tostring(c, -1) : "(error object is not a string)");
    luaL_unref(w->L, LUA_REGISTRYINDEX, co.ref);
    r->local = 0;
    r->resp_headers.n = 0;
    return MOXY_ERROR;
}

int moxy_lua_has(const moxy_worker_t *w, int phase)
{
    return w->lua_hooks[phase] > 0;
}

int moxy_lua_run(moxy_req_t *r, int phase)
{
    moxy_worker_t *w = r->c->w;
    if (w->lua_hooks[phase] == 0) return MOXY_OK;
    struct moxy_lua_co_s co;
    co_get(w, &co);
    r->hook_phase = phase;
    /* The pointer travels as a number: ffi.cast of a light userdata is not
     * compiled by LuaJIT's JIT (NYI), a number to pointer cast is. */
    lua_pushnumber(co.co, (lua_Number)(uintptr_t)r);
    lua_pushinteger(co.co, phase);
    if (r->txn_ref > 0) {
        lua_rawgeti(w->L, LUA_REGISTRYINDEX, r->txn_ref);
        lua_xmove(w->L, co.co, 1);
    } else {
        lua_pushnil(co.co);
    }
    return co_resume(r, co, 3);
}

static void hook_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    hook_state_t *h = arg;
    moxy_req_t *r = h->r;
    moxy_client_t *c = r->c;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_client_hold(c);
    lua_pushnumber(h->co.co, (lua_Number)(uintptr_t)r);
    int rc = co_resume(r, h->co, 1);
    if (rc != MOXY_AGAIN) {
        r->hook = NULL;
        moxy_req_hooks_done(r, rc);
    }
    moxy_client_release(c);
}

void moxy_lua_req_done(moxy_req_t *r)
{
    if (r->txn_ref > 0) luaL_unref(r->c->w->L, LUA_REGISTRYINDEX, r->txn_ref);
    r->txn_ref = 0;
}

void moxy_lua_abort(moxy_req_t *r)
{
    hook_state_t *h = r->hook;
    if (!h) return;
    event_del(&h->timer);
    luaL_unref(r->c->w->L, LUA_REGISTRYINDEX, h->co.ref);
    r->hook = NULL;
}

int moxy_lua_check_scripts(const moxy_conf_t *conf)
{
    lua_State *L = moxy_lua_new(conf->dir);
    if (!L) {
        fprintf(stderr, "moxy: cannot create a Lua VM\n");
        return MOXY_ERROR;
    }
    int rc = MOXY_OK;
    if (load_scripts(L, conf) != 0) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        rc = MOXY_ERROR;
    } else {
        lua_pop(L, 1); /* the counts: the runtime module is on top again */
        if (run_once(L, "init") != 0) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            rc = MOXY_ERROR;
        }
    }
    lua_close(L);
    return rc;
}

/*
 * lua_bridge.h -- each worker's LuaJIT VM and the hooks it runs.  The txn
 * API itself is lua/moxy/txn.lua over the FFI exports in ffi.h.
 *
 * Hooks run in coroutines ("tasks").  A task belongs to a request phase, or
 * to a timer callback (moxy.timer).  A task that yields waits for one thing:
 * a sleep, or an operation another file runs (moxy.http's fetch, the request
 * body); that file resumes it with moxy_lua_task_wake.
 */
#ifndef MOXY_LUA_BRIDGE_H
#define MOXY_LUA_BRIDGE_H

#include "base/config.h"
#include "http/http-t.h"
#include "http/worker.h"

#include <lua.h>

typedef struct moxy_lua_task_s moxy_lua_task_t;

/* Build g's VM, load g->conf's scripts and run their worker_init hooks (on
 * g's worker's thread, or before it starts).  MOXY_OK, or MOXY_ERROR with
 * the reason (naming file:line) in the worker's error. */
int moxy_lua_wgen_init(moxy_wgen_t *g);

/* g is no longer current: its timers stop (one whose callback runs ends
 * with it). */
void moxy_lua_wgen_retire(moxy_wgen_t *g);

/* g's drain deadline passed: drop the callbacks of its timers that still
 * run (each releases its reference to g). */
void moxy_lua_wgen_cut(moxy_wgen_t *g);

/* Stop g's timers and parked tasks, then close g's VM. */
void moxy_lua_wgen_free(moxy_wgen_t *g);

/* Run the hooks of phase (MOXY_PHASE_*) for r.  MOXY_OK: go on; MOXY_DONE:
 * a hook answered (r->status, r->local_body and r->resp_headers hold the
 * answer, for the caller to send); MOXY_ERROR: a script failed (logged with
 * file:line), answer 500; MOXY_AGAIN: a hook yielded, done(r, rc) follows
 * when the hooks are done, with what they would have returned.
 * MOXY_PHASE_BODY takes the chunk and eof flag through moxy_lua_run_body. */
int moxy_lua_run(moxy_req_t *r, int phase, moxy_hooks_done_fn done);

/* Run the on_body hooks over len bytes at data (eof: the last call).  The
 * hooks' result is appended to out.  Return codes as moxy_lua_run (no
 * MOXY_DONE: a body hook cannot answer); after MOXY_AGAIN the result goes
 * to out before done. */
int moxy_lua_run_body(moxy_req_t *r, const char *data, size_t len, int eof, struct evbuffer *out,
                      moxy_hooks_done_fn done);

/* 1 when phase has hooks in generation g (so a caller can skip everything else). */
static inline int moxy_lua_has(const moxy_wgen_t *g, int phase)
{
    return g->lua_hooks[phase] > 0;
}

/* Run generation g's on_tls_hello hooks for a connection at its TLS
 * client's hello; owner is what their hello object reads (through the
 * FFI: an HTTP/1 moxy_client_t).  MOXY_OK: they are done; MOXY_ERROR: one
 * failed (logged); MOXY_AGAIN: one waits, and *slot holds the parked run
 * until done(owner, MOXY_OK or MOXY_ERROR) is called, or until the owner,
 * going first, drops it with moxy_lua_hello_drop(*slot).  A parked run
 * keeps g. */
int moxy_lua_run_hello(moxy_wgen_t *g, void *owner, moxy_lua_task_t **slot, void (*done)(void *owner, int rc));
void moxy_lua_hello_drop(moxy_lua_task_t *t);

/* r ends: drop its hooks still parked, release what they kept (its txn).
 * Starting a phase drops an earlier phase's parked hooks the same way. */
void moxy_lua_req_done(moxy_req_t *r);

/* r2 is a request made from r (moxy_req_background): its hooks get a txn
 * of their own whose ctx is r's txn.ctx (the same table), when r has one. */
void moxy_lua_req_fork(moxy_req_t *r2, const moxy_req_t *r);

/* Start the thread that stops hooks running past their generation's
 * lua.cpu_budget on these workers, before the workers start; stop it
 * before they are joined.  budget: the current one (seconds, 0: none),
 * which sets how often it looks.  MOXY_ERROR: cannot. */
int moxy_lua_watchdog_start(moxy_worker_t **workers, int n, double budget);
void moxy_lua_watchdog_stop(void);

/* A reload changed lua.cpu_budget to budget: the watchdog looks as often
 * as it needs. */
void moxy_lua_watchdog_tick(double budget);

/* Load conf's scripts in a scratch VM and run their init hooks (moxy -t, at
 * start and for each reload).  MOXY_OK, or MOXY_ERROR after writing the
 * reason to err. */
int moxy_lua_check_scripts(const moxy_conf_t *conf, FILE *err);

/* --- for operations a task waits on (moxy.http, the request body) --- */

/* The running task (hooks or a timer's callback), for an FFI call that
 * starts an operation the task will wait for; NULL outside hooks. */
moxy_lua_task_t *moxy_lua_current_task(void);

/* The operation op of task t started: t waits for it.  cancel(op) is called
 * if t is dropped first (its client left, the worker stops); after cancel,
 * op must not wake t. */
void moxy_lua_task_wait(moxy_lua_task_t *t, void *op, void (*cancel)(void *op));

/* The coroutine of t, to push the operation's results on before waking it. */
lua_State *moxy_lua_task_thread(moxy_lua_task_t *t);

/* The operation t waited for is done and nresults values are pushed on its
 * coroutine: resume it (its yield returns them). */
void moxy_lua_task_wake(moxy_lua_task_t *t, int nresults);

/* The request t runs hooks for; NULL for a timer's callback or a
 * connection's hooks. */
moxy_req_t *moxy_lua_task_request(const moxy_lua_task_t *t);

/* The worker t runs on. */
moxy_worker_t *moxy_lua_task_worker(const moxy_lua_task_t *t);

/* The generation t runs on. */
moxy_wgen_t *moxy_lua_task_wgen(const moxy_lua_task_t *t);

/* The configuration the running Lua code belongs to: the worker's (hooks,
 * timers, worker_init) or the one whose init hooks run; NULL elsewhere. */
const moxy_conf_t *moxy_lua_conf(void);

/* Make conf what moxy_lua_conf() returns outside workers (moxy test's
 * requests; NULL: none). */
void moxy_lua_use_conf(const moxy_conf_t *conf);

/* The worker the running Lua code belongs to; NULL on the main thread (init
 * hooks) and outside Lua. */
moxy_worker_t *moxy_lua_worker(void);

/* The FFI exports of lua/moxy/runtime.lua (tools/check-ffi.lua compares them with
 * its ffi.cdef; bump api/ffi.h's MOXY_FFI_ABI on any change). */
/* BEGIN FFI lua/moxy/runtime.lua */
/* Park the running hook (or timer callback) for secs: it yields next, and
 * is resumed when the time is up.  MOXY_DECLINED outside hooks. */
int moxy_ffi_sleep(double secs);

/* Call runtime.timers[id] after delay seconds, then every interval seconds
 * (interval > 0) until cancelled.  MOXY_DECLINED: no event loop on this
 * thread (moxy -t, init); MOXY_ERROR: too many timers. */
int moxy_ffi_timer_add(double delay, double interval, int id);

/* Cancel timer id (a running callback finishes).  MOXY_DECLINED: unknown. */
int moxy_ffi_timer_cancel(int id);

/* moxy.watch: with watch = true, a change to the file at path (len bytes,
 * relative to the configuration's directory) reloads.  Recorded while the
 * main thread loads a generation's scripts (their top level and init
 * hooks); a no-op in workers.  MOXY_ERROR: out of memory. */
int moxy_ffi_watch(const char *path, size_t len);
/* END FFI */

/* The scripts' part in moxy's life (lifecycle.h): a VM per worker and
 * generation; the watchdog follows each reload. */
extern struct moxy_module_s moxy_lua_module;

#endif

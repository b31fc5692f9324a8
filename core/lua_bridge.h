/*
 * lua_bridge.h -- each worker's LuaJIT VM and the hooks it runs.  The txn
 * API itself is lua/moxy/txn.lua over the FFI exports in ffi.h.
 */
#ifndef MOXY_LUA_BRIDGE_H
#define MOXY_LUA_BRIDGE_H

#include "config.h"
#include "http-t.h"

/* Build w's VM and load conf's scripts.  MOXY_OK, or MOXY_ERROR with the
 * reason (naming file:line) in w->error. */
int moxy_lua_worker_init(moxy_worker_t *w);

/* Close w's VM. */
void moxy_lua_worker_free(moxy_worker_t *w);

/* The phases whose hooks moxy_lua_run runs. */
enum { MOXY_PHASE_REQUEST = 0, MOXY_PHASE_RESPONSE, MOXY_PHASE_ERROR, MOXY_PHASES };

/* Run the hooks of phase for r.  MOXY_OK: go on; MOXY_DONE: a hook answered
 * (r->status, r->local_body and r->resp_headers hold the answer, for the
 * caller to send); MOXY_ERROR: a script failed (logged with file:line),
 * answer 500; MOXY_AGAIN: a hook yielded, moxy_req_hooks_done(r, rc)
 * follows when the hooks are done (r->hook_phase says which phase). */
int moxy_lua_run(moxy_req_t *r, int phase);

/* 1 when phase has hooks (so a caller can skip everything else). */
int moxy_lua_has(const moxy_worker_t *w, int phase);

/* r ends: release what its hooks kept (its txn). */
void moxy_lua_req_done(moxy_req_t *r);

/* The client of r went away while its hooks were parked: cancel their event
 * and drop their coroutine. */
void moxy_lua_abort(moxy_req_t *r);

/* Load conf's scripts in a scratch VM and run their init hooks (moxy -t, and
 * once at start).  MOXY_OK, or MOXY_ERROR after printing the reason. */
int moxy_lua_check_scripts(const moxy_conf_t *conf);

#endif

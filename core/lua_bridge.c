/*
 * lua_bridge.c -- a worker's LuaJIT VM: loads the scripts through
 * lua/moxy/runtime.lua and runs their hooks; see lua_bridge.h.
 */
#include "lua_bridge.h"
#include "http.h"
#include "log.h"
#include "lua_vm.h"
#include "worker.h"

#include <lauxlib.h>
#include <stdio.h>

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
        lua_pushstring(L, conf->scripts[i]);
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
    int nhooks = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    w->lua_on_request = LUA_NOREF;
    if (nhooks > 0) {
        lua_getfield(L, -1, "on_request");
        w->lua_on_request = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, 0);
    return MOXY_OK;
}

void moxy_lua_worker_free(moxy_worker_t *w)
{
    if (w->L) lua_close(w->L);
    w->L = NULL;
}

int moxy_lua_on_request(moxy_req_t *r)
{
    moxy_worker_t *w = r->c->w;
    if (w->lua_on_request == LUA_NOREF) return MOXY_OK;
    lua_State *L = w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->lua_on_request);
    /* The pointer travels as a number: ffi.cast of a light userdata is not
     * compiled by LuaJIT's JIT (NYI), a number to pointer cast is. */
    lua_pushnumber(L, (lua_Number)(uintptr_t)r);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        moxy_log(MOXY_LOG_ERR, r->id, "on_request: %s", lua_tostring(L, -1));
        lua_settop(L, 0);
        r->local = 0;
        r->resp_headers.n = 0;
        return MOXY_ERROR;
    }
    int answered = lua_toboolean(L, -1);
    lua_settop(L, 0);
    if (answered && r->local) {
        moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
        return MOXY_DONE;
    }
    return MOXY_OK;
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
    }
    lua_close(L);
    return rc;
}

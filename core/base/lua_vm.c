/*
 * lua_vm.c -- LuaJIT states with moxy's module path; see lua_vm.h.
 */
#include "base/lua_vm.h"
#include "base/moxy.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char lua_dir[PATH_MAX];
static pthread_once_t lua_dir_once = PTHREAD_ONCE_INIT;

/* 1 (and lua_dir set) when fmt, given dir, names a directory holding moxy's modules. */
static int try_lua_dir(const char *fmt, const char *dir)
{
    char cand[PATH_MAX + 32], probe[PATH_MAX + 64];
    struct stat st;
    snprintf(cand, sizeof(cand), fmt, dir);
    snprintf(probe, sizeof(probe), "%s/moxy/config.lua", cand);
    return stat(probe, &st) == 0 && realpath(cand, lua_dir) != NULL;
}

/* $MOXY_LUA_DIR; else beside the executable in a source tree (./moxy,
 * build/moxy); else the LUADIR it was built for (make install rebuilds when
 * LUADIR changes); else PREFIX/share/moxy/lua relative to PREFIX/bin/moxy, for
 * a tree installed with DESTDIR or moved after installing. */
static void find_lua_dir(void)
{
    const char *env = getenv("MOXY_LUA_DIR");
    if (env && *env) {
        snprintf(lua_dir, sizeof(lua_dir), "%s", env);
        return;
    }
    char exe[PATH_MAX], *slash = NULL;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        slash = strrchr(exe, '/');
    }
    if (slash) {
        *slash = '\0';
        if (try_lua_dir("%s/lua", exe) || try_lua_dir("%s/../lua", exe)) return;
    }
    if (try_lua_dir("%s", MOXY_LUADIR)) return;
    if (slash && try_lua_dir("%s/../share/moxy/lua", exe)) return;
    snprintf(lua_dir, sizeof(lua_dir), "%s", MOXY_LUADIR); /* for the error message */
}

const char *moxy_lua_dir(void)
{
    pthread_once(&lua_dir_once, find_lua_dir);
    return lua_dir;
}

/* A state's allocations pass through account_alloc to LuaJIT's own
 * allocator. */
static void *account_alloc(void *ud, void *p, size_t osize, size_t nsize)
{
    moxy_lua_mem_t *m = ud;
    if (m->enforce && m->limit && nsize > osize && m->used + (int64_t)(nsize - osize) > m->limit)
        return NULL; /* LuaJIT raises "not enough memory" */
    void *q = m->orig(m->orig_ud, p, osize, nsize);
    if (q || nsize == 0) m->used += (int64_t)nsize - (int64_t)(p ? osize : 0);
    return q;
}

moxy_lua_mem_t *moxy_lua_memory_limit(lua_State *L, size_t limit)
{
    moxy_lua_mem_t *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->orig = lua_getallocf(L, &m->orig_ud);
    m->used = (int64_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + lua_gc(L, LUA_GCCOUNTB, 0);
    m->limit = (int64_t)limit;
    lua_setallocf(L, account_alloc, m);
    return m;
}

void moxy_lua_close(lua_State *L)
{
    void *ud;
    moxy_lua_mem_t *m = NULL;
    if (lua_getallocf(L, &ud) == account_alloc) {
        /* LuaJIT frees its own allocator's whole arena at close only when
         * that allocator is the state's: put it back first, or every block
         * the VM ever held stays mapped */
        m = ud;
        lua_setallocf(L, m->orig, m->orig_ud);
    }
    lua_close(L);
    free(m);
}

/* dofile and loadfile with a relative path read it from the configuration's
 * directory (the first argument), as every other relative path in it; nil
 * (standard input) and absolute paths are left as they are, and "." (the
 * working directory: moxy test, moxy -c moxy.lua) needs no wrapper. */
static const char relative_files[] =
    "local dir, dofile, loadfile = ...\n"
    "package.loaded['moxy.conf_dir'] = dir\n"
    "if dir == '.' then return end\n"
    "local function full(p)\n"
    "  if type(p) == 'string' and p:sub(1, 1) ~= '/' then return dir .. '/' .. p end\n"
    "  return p\n"
    "end\n"
    "_G.dofile = function(p, ...) return dofile(full(p), ...) end\n"
    "_G.loadfile = function(p, ...) return loadfile(full(p), ...) end\n";

/* require's "loading" mark: LuaJIT sets package.loaded[name] to it while a
 * module loads and leaves it there when the loading fails.  Found once per
 * VM by a require made to fail, kept in the registry under &sentinel_key. */
static char sentinel_key;
static const char find_sentinel[] =
    "package.preload['moxy.(sentinel)'] = function() error('') end\n"
    "pcall(require, 'moxy.(sentinel)')\n"
    "local s = package.loaded['moxy.(sentinel)']\n"
    "package.loaded['moxy.(sentinel)'], package.preload['moxy.(sentinel)'] = nil, nil\n"
    "return s\n";

void moxy_lua_forget_broken_requires(lua_State *L)
{
    lua_pushlightuserdata(L, &sentinel_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "loaded");
        if (lua_istable(L, -1)) {
            lua_pushnil(L);
            while (lua_next(L, -2)) { /* stack: sentinel package loaded key value */
                int broken = lua_rawequal(L, -1, -5);
                lua_pop(L, 1);
                if (broken) {
                    lua_pushvalue(L, -1);
                    lua_pushnil(L);
                    lua_rawset(L, -4); /* clearing a field while traversing is allowed */
                }
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

lua_State *moxy_lua_new(const char *conf_dir)
{
    lua_State *L = luaL_newstate();
    if (!L) return NULL;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    /* moxy's modules first ("moxy.*" cannot be shadowed), then the
     * configuration's directory, then Lua's defaults (./?.lua: the working
     * directory, last) */
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", moxy_lua_dir(), moxy_lua_dir());
    if (conf_dir) lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", conf_dir, conf_dir);
    else lua_pushliteral(L, "");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushlightuserdata(L, &sentinel_key);
    if (luaL_loadbuffer(L, find_sentinel, sizeof(find_sentinel) - 1, "=moxy") != 0 || lua_pcall(L, 0, 1, 0) != 0)
        goto err;
    lua_rawset(L, LUA_REGISTRYINDEX);
    if (conf_dir) {
        if (luaL_loadbuffer(L, relative_files, sizeof(relative_files) - 1, "=moxy") != 0) goto err;
        lua_pushstring(L, conf_dir);
        lua_getglobal(L, "dofile");
        lua_getglobal(L, "loadfile");
        if (lua_pcall(L, 3, 0, 0) != 0) goto err;
    }
    return L;
err:
    moxy_lua_close(L);
    return NULL;
}

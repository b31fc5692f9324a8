/*
 * lua_vm.h -- creating LuaJIT states with moxy's module path.
 */
#ifndef MOXY_LUA_VM_H
#define MOXY_LUA_VM_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* The directory holding moxy's Lua modules (lua/moxy/NAME.lua): $MOXY_LUA_DIR, else
 * "lua" beside the executable, else the install directory. */
const char *moxy_lua_dir(void);

/* A new state with the standard libraries and package.path covering moxy's
 * modules and then conf_dir (may be NULL), whose dofile and loadfile read a
 * relative path from conf_dir.  NULL when out of memory.  Close it with
 * moxy_lua_close. */
lua_State *moxy_lua_new(const char *conf_dir);

/* Forget the modules whose require failed midway in L (package.loaded
 * left at require's loading mark), so that the next require loads them
 * again instead of failing with "loop or previous error loading module". */
void moxy_lua_forget_broken_requires(lua_State *L);

/* Close L (made by moxy_lua_new) and free its memory accounting. */
void moxy_lua_close(lua_State *L);

/* The memory accounting of a state (moxy_lua_memory_limit). */
typedef struct moxy_lua_mem_s {
    lua_Alloc orig;
    void *orig_ud;
    int64_t used;  /* bytes the state holds */
    int64_t limit; /* 0: none */
    int enforce;   /* 1: allocations past limit fail (while hooks run) */
} moxy_lua_mem_t;

/* Count what L allocates from now on against limit bytes.  The limit holds
 * only while the result's enforce is 1: an allocation past it fails there
 * with "not enough memory", which the running code sees as an error;
 * outside, moxy's own calls never fail.  The accounting lives until
 * moxy_lua_close.  NULL when out of memory. */
moxy_lua_mem_t *moxy_lua_memory_limit(lua_State *L, size_t limit);

#endif

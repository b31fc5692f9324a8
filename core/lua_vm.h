/*
 * lua_vm.h -- creating LuaJIT states with moxy's module path.
 */
#ifndef MOXY_LUA_VM_H
#define MOXY_LUA_VM_H

#include <lua.h>

/* The directory holding moxy's Lua modules (lua/moxy/NAME.lua): $MOXY_LUA_DIR, else
 * "lua" beside the executable, else the install directory. */
const char *moxy_lua_dir(void);

/* A new state with the standard libraries and package.path covering moxy's
 * modules and conf_dir (may be NULL).  NULL when out of memory.  Close it
 * with moxy_lua_close. */
lua_State *moxy_lua_new(const char *conf_dir);

/* Close L (made by moxy_lua_new) and free its memory accounting. */
void moxy_lua_close(lua_State *L);

/* Count what L allocates from now on against limit bytes (0: no limit).
 * The limit holds only while enforce is on (moxy_lua_memory_enforce): an
 * allocation past it fails there with "not enough memory", which the
 * running code sees as an error; outside, moxy's own calls never fail.
 * MOXY_ERROR when out of memory. */
int moxy_lua_memory_limit(lua_State *L, size_t limit);

/* Turn the limit of L on (while hooks run) or off; returns the bytes L
 * holds. */
size_t moxy_lua_memory_enforce(lua_State *L, int on);

#endif

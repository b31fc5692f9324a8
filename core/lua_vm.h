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
 * modules and conf_dir (may be NULL).  NULL when out of memory. */
lua_State *moxy_lua_new(const char *conf_dir);

#endif

/*
 * test_runner.c -- `moxy test [busted options] [paths...]`: busted (Debian's
 * lua-busted) run inside moxy's own LuaJIT runtime, so specs load moxy's
 * modules (moxy.router, moxy.config, the scripts' helpers...) exactly as
 * scripts do, with the FFI exports of this binary behind them.
 */
#include "base/log.h"
#include "base/lua_vm.h"
#include "base/moxy.h"

#include <lauxlib.h>
#include <stdio.h>

int moxy_test_main(int argc, char **argv);

static const char RUN[] =
    "local ok, runner = pcall(require, 'busted.runner')\n"
    "if not ok then\n"
    "  io.stderr:write('moxy test: busted is not installed (Debian package lua-busted)\\n')\n"
    "  os.exit(2)\n"
    "end\n"
    "moxy = require 'moxy'\n"
    "runner({ standalone = false })\n";

/* argv[0] is "test"; the rest are busted's arguments.  Returns the exit
 * status (busted itself exits with its own). */
int moxy_test_main(int argc, char **argv)
{
    /* moxy's own lines from in-process requests (moxy.test): warnings and
     * errors only; t.run captures the script's moxy.log calls itself */
    moxy_log_open_error("stderr", MOXY_LOG_WARN);
    lua_State *L = moxy_lua_new(".");
    if (!L) {
        fprintf(stderr, "moxy test: cannot create a Lua VM\n");
        return 2;
    }
    lua_createtable(L, argc, 1);
    lua_pushliteral(L, "moxy test");
    lua_rawseti(L, -2, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");
    int rc = 0;
    if (luaL_loadbuffer(L, RUN, sizeof(RUN) - 1, "=moxy test") != 0 || lua_pcall(L, 0, 0, 0) != 0) {
        fprintf(stderr, "moxy test: %s\n", lua_tostring(L, -1));
        rc = 2;
    }
    moxy_lua_close(L);
    return rc;
}

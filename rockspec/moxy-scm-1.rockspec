-- The Lua half of moxy, for `luarocks make rockspec/moxy-scm-1.rockspec`.
-- The modules call into the moxy binary through LuaJIT's FFI: they run inside
-- moxy (or `moxy test`), not in a plain Lua interpreter.
package = "moxy"
version = "scm-1"
source = { url = "git+file://." }
description = {
  summary = "Lua API of the moxy edge proxy",
  detailed = "The txn API, the script runtime and the configuration checker of moxy.",
  license = "Apache-2.0",
}
dependencies = { "lua == 5.1" }
build = {
  type = "builtin",
  modules = {
    ["moxy"] = "lua/moxy/init.lua",
    ["moxy.access"] = "lua/moxy/access.lua",
    ["moxy.acl"] = "lua/moxy/acl.lua",
    ["moxy.waf"] = "lua/moxy/waf.lua",
    ["moxy.waf_rules"] = "lua/moxy/waf_rules.lua",
    ["moxy.config"] = "lua/moxy/config.lua",
    ["moxy.cookie"] = "lua/moxy/cookie.lua",
    ["moxy.crypto"] = "lua/moxy/crypto.lua",
    ["moxy.tls_hello"] = "lua/moxy/tls_hello.lua",
    ["moxy.cache"] = "lua/moxy/cache.lua",
    ["moxy.fleet"] = "lua/moxy/fleet.lua",
    ["moxy.geo"] = "lua/moxy/geo.lua",
    ["moxy.http"] = "lua/moxy/http.lua",
    ["moxy.metrics"] = "lua/moxy/metrics.lua",
    ["moxy.query"] = "lua/moxy/query.lua",
    ["moxy.ratelimit"] = "lua/moxy/ratelimit.lua",
    ["moxy.re"] = "lua/moxy/re.lua",
    ["moxy.redis"] = "lua/moxy/redis.lua",
    ["moxy.router"] = "lua/moxy/router.lua",
    ["moxy.url"] = "lua/moxy/url.lua",
    ["moxy.runtime"] = "lua/moxy/runtime.lua",
    ["moxy.shared"] = "lua/moxy/shared.lua",
    ["moxy.socket"] = "lua/moxy/socket.lua",
    ["moxy.test"] = "lua/moxy/test.lua",
    ["moxy.txn"] = "lua/moxy/txn.lua",
    ["moxy.types"] = "lua/moxy/types.lua",
    ["moxy.upstream"] = "lua/moxy/upstream.lua",
  },
}

/*
 * modules.c -- what a moxy process is made of; see modules.h.  The order of
 * registration is the order of the lifecycle calls (frees in reverse).
 */
#include "ops/modules.h"
#include "api/fleet.h"
#include "api/geoip.h"
#include "cache/http_cache.h"
#include "http/offload.h"
#include "api/redis.h"
#include "api/socket.h"
#include "http/http.h"
#include "http/lifecycle.h"
#include "http/lua_bridge.h"
#include "http/request.h"
#include "ops/admin.h"
#include "ops/watch.h"
#include "proxy/health_check.h"
#include "proxy/http_fetch.h"
#include "proxy/resolver.h"

void moxy_modules_setup(void)
{
    static int done;
    if (done) return;
    done = 1;
    moxy_module_register(&moxy_upstream_module);
    moxy_module_register(&moxy_lua_module);
    moxy_module_register(&moxy_geoip_module);
    moxy_module_register(&moxy_fetch_module);
    moxy_module_register(&moxy_socket_module);
    moxy_module_register(&moxy_redis_module);
    moxy_module_register(&moxy_offload_module);
    moxy_module_register(&moxy_health_module);
    moxy_module_register(&moxy_resolver_module);
    moxy_module_register(&moxy_admin_module);
    moxy_module_register(&moxy_watch_module);
    moxy_module_register(&moxy_cache_module);
    moxy_module_register(&moxy_fleet_module);
    moxy_http_init();
    moxy_req_set_content_handler(moxy_cache_content);
    moxy_req_set_early_check(moxy_cache_shard_check);
    moxy_upstream_set_cache(&moxy_cache_for_proxy);
    moxy_cache_set_purge_hook(moxy_fleet_cache_purged);
}

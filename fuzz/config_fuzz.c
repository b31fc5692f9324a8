/*
 * config_fuzz.c -- the conversion of the values a user writes in the
 * configuration: sizes ("64k"), durations ("250ms"), listen and server
 * addresses ("[::1]:80", names), CIDR lists, status lists ("5xx",
 * "500-504"), Host values, patterns, log fields... through the real
 * loader: lua/moxy/config.lua's check, then core/base/config.c's copy into C
 * (moxy_conf_from_table), then what the worker converts at start
 * (moxy_wgen_alloc's timevals, the pools' shared state).
 *
 * Input:
 *   byte 0   the slot: which key of a small valid configuration gets the values
 *   byte 1   how each value is written: bit 0 as a number when it reads as one
 *            (tonumber: "1e999", "0x10", "-0"); bit 1 wrapped in a table
 *   rest     up to 4 values separated by 0x1f, each embedded as a Lua long
 *            string ([==[...]==] with a level the value does not close)
 *
 * The configuration is Lua source built from a template, compiled and
 * checked in one Lua state kept for the whole run (as moxy.config.load does
 * with a file's text, without the file).  No value is ever Lua code.
 *
 * Invariants:
 *  - the loader never crashes, and UBSan sees no conversion out of range
 *    (config.c's size_t/int casts, moxy_timeval of every timeout);
 *  - a configuration the Lua check accepts is also accepted by the C copy
 *    (config.c's "bad address" means the two disagree);
 *  - every error line is "FILE:LINE: KEY: message" (or "FILE: KEY: message"
 *    from the C side) whose KEY starts with a top-level key of the template;
 *  - every duration the loader accepts converts to microseconds in a long
 *    long (the runtime computes ms and us from them: upstream.c,
 *    health_check.c, lua_bridge.c, http_upstream.c), every size to size_t.
 */
#include "fuzz.h"
#include "base/config.h"
#include "base/lua_vm.h"
#include "proxy/upstream.h"
#include "http/worker.h"

#include <assert.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>

#define PATH "/fuzz/moxy.lua"
#define MAX_VALUES 4

/* The keys the slots write; @1@..@4@ are the values. */
static const char *const SLOTS[] = {
    "listen = { @1@, @2@ },",
    "listen = { { addr = @1@, name = @2@, backlog = @3@, proxy_protocol = @4@ } },",
    "upstreams = { app = { servers = { @1@, @2@ } } },",
    "upstreams = { app = { servers = { { addr = @1@, weight = @2@, max_conns = @3@, slow_start = @4@ } } } },",
    "upstreams = { app = { servers = { \"127.0.0.1:9000\" }, keepalive = @1@, keepalive_timeout = @2@, "
    "host = @3@, tries = @4@ } },",
    "upstreams = { app = { servers = { \"127.0.0.1:9000\" }, retry_timeout = @1@, retry_statuses = { @2@, @3@ }, "
    "retry_budget = @4@ } },",
    "upstreams = { app = { servers = { \"127.0.0.1:9000\" }, passive = { failures = @1@, window = @2@, "
    "backoff = @3@, statuses = { @4@ } } } },",
    "upstreams = { app = { servers = { \"127.0.0.1:9000\" }, health = { path = @1@, interval = @2@, "
    "timeout = @3@, statuses = { @4@ } } } },",
    "upstreams = { app = { servers = { \"127.0.0.1:9000\" }, health = { method = @1@, host = @2@, "
    "body = @3@, type = @4@ } } },",
    "trusted_proxies = { @1@, @2@, @3@, @4@ },",
    "trusted_proxies = @1@, real_ip_header = @2@,",
    "cache = { size = @1@, max_object = @2@, coalesce_timeout = @3@, stale_if_error = @4@ },",
    "cache = { purge = { @1@, @2@ }, targeted_fields = { @3@ }, sendfile = @4@ },",
    "limits = { header_bytes = @1@, uri_bytes = @2@, body_bytes = @3@, headers = @4@ },",
    "timeouts = { client_header = @1@, client_body = @2@, connect = @3@, upstream = @4@ },",
    "timeouts = { client_send = @1@, keepalive = @2@, drain = @3@ }, lua = { cpu_budget = @4@ },",
    "lua = { memory = @1@ }, shared = { dict = @2@, other = @3@ }, workers = @4@,",
    "admin = { listen = @1@, token = @2@ }, resolver = { nameservers = { @3@ }, timeout = @4@ },",
    "log = { format = @1@, level = @2@, fields = { @3@, @4@ } },",
    "default_upstream = @1@, listen = { { addr = \"127.0.0.1:8080\", upstream = @2@ } },",
};

/* health.body patterns are compiled by moxy.re (PCRE2 through the FFI) and
 * kept in its per-VM cache, in LuaJIT's heap, which LeakSanitizer does not
 * scan: they are not leaks. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libpcre2-8.so\n";
}

/* main.c's (not linked): worker.c calls it when a worker thread ends. */
void moxy_main_worker_exited(void)
{
}

static lua_State *L;
static int check_ref;       /* registry: function(src, path) -> conf | nil, errors */
static moxy_worker_t *worker;

/* The loader of moxy.config.load, on a string instead of a file. */
static const char LOADER[] =
    "local M = require 'moxy.config'\n"
    "return function(src, path)\n"
    "  local chunk, err = loadstring(src, '@' .. path)\n"
    "  if not chunk then return nil, { err } end\n"
    "  local ok, t = pcall(chunk)\n"
    "  if not ok then return nil, { tostring(t) } end\n"
    "  return M.check(t, path, src)\n"
    "end\n";

/* libFuzzer sees the C code's coverage only; the checks are Lua.  A line
 * hook counts the Lua code's edges (pairs of lines, as AFL does) in extra
 * counters that libFuzzer treats as coverage, so that it keeps inputs that
 * reach new checks. */
#define LUA_EDGES (1 << 14)
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_edges[LUA_EDGES];
static uintptr_t lua_prev;

static void line_hook(lua_State *S, lua_Debug *ar)
{
    /* the line only (asking which file costs a lua_getinfo per line, and
     * most lines run are config.lua's); an edge is seen or not: counts of
     * loops over the input would make every length a new feature */
    MOXY_UNUSED(S);
    uintptr_t cur = ((uintptr_t)ar->currentline * 2654435761u) & (LUA_EDGES - 1);
    lua_edges[cur ^ lua_prev] = 1;
    lua_prev = cur >> 1;
}

static void init(void)
{
    L = moxy_lua_new(NULL);
    if (L) {
        /* the interpreter only: a line hook does not see JIT-compiled code */
        luaL_dostring(L, "jit.off(); jit.flush()");
        lua_sethook(L, line_hook, LUA_MASKLINE, 0);
    }
    if (!L || luaL_loadstring(L, LOADER) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
        fprintf(stderr, "config_fuzz: cannot load moxy.config: %s\n", L ? lua_tostring(L, -1) : "no state");
        abort();
    }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    worker = moxy_worker_alloc(0);
    if (!worker || worker->error[0]) abort();
}

/* A growing output buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(buf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

/* A long string holding exactly v[0..n): its level is the lowest whose
 * closing bracket first occurs, in the value followed by it, at its end. */
static void put_long_string(buf_t *b, const char *v, size_t n)
{
    int level = 0;
    char *s = malloc(2 * n + 3); /* a value of n bytes closes levels below n at most */
    for (;; level++) {
        size_t cl = (size_t)level + 2;
        memcpy(s, v, n);
        s[n] = ']';
        memset(s + n + 1, '=', (size_t)level);
        s[n + cl - 1] = ']';
        const char *first = memmem(s, n + cl, s + n, cl);
        if (first == s + n) break;
    }
    free(s);
    put(b, "[", 1);
    for (int i = 0; i < level; i++) put(b, "=", 1);
    put(b, "[\n", 2); /* a newline right after the opening is not part of the string */
    put(b, v, n);
    put(b, "]", 1);
    for (int i = 0; i < level; i++) put(b, "=", 1);
    put(b, "]", 1);
}

static void put_value(buf_t *b, const char *v, size_t n, unsigned how)
{
    if (how & 2) puts_(b, "{ ");
    if (how & 1) {
        puts_(b, "(tonumber(");
        put_long_string(b, v, n);
        puts_(b, ") or ");
        put_long_string(b, v, n);
        puts_(b, ")");
    } else {
        put_long_string(b, v, n);
    }
    if (how & 2) puts_(b, " }");
}

static const char *const TOP[] = {"workers", "listen", "upstreams", "default_upstream", "scripts", "lua",
                                  "limits", "timeouts", "log", "pid_file", "watch", "cache", "shared",
                                  "resolver", "geoip", "trusted_proxies", "real_ip_header", "admin"};

/* 1 when the key path at k (up to ": ") starts with a top-level key. */
static int key_ok(const char *k)
{
    for (size_t i = 0; i < MOXY_ARRAY_LEN(TOP); i++) {
        size_t n = strlen(TOP[i]);
        if (strncmp(k, TOP[i], n) == 0 && (k[n] == ':' || k[n] == '.' || k[n] == '['))
            return strstr(k, ": ") != NULL;
    }
    return 0;
}

/* "PATH:LINE: KEY: message" (Lua) or "PATH: KEY: message" (C). */
static void check_error_line(const char *line)
{
    size_t pl = strlen(PATH);
    if (strncmp(line, PATH, pl) != 0 || line[pl] != ':') goto bad;
    const char *p = line + pl + 1;
    if (*p >= '0' && *p <= '9') {
        while (*p >= '0' && *p <= '9') p++;
        if (*p != ':') goto bad;
        p++;
    }
    if (*p != ' ') goto bad;
    if (!key_ok(p + 1)) goto bad;
    return;
bad:
    fprintf(stderr, "config_fuzz: error line without FILE:LINE: KEY: %s\n", line);
    abort();
}

/* What the runtime computes from a duration (ms and us in long long:
 * upstream.c's windows and backoffs, health_check.c's interval, the CPU
 * budget) and from a timeout (moxy_timeval). */
static void probe_seconds(double s)
{
    assert(isfinite(s) && s >= 0);
    volatile long long us = (long long)(s * 1e6);
    struct timeval tv = moxy_timeval(s);
    MOXY_UNUSED(us);
    MOXY_UNUSED(tv);
}

static void probe_conf(const moxy_conf_t *c)
{
    /* what a worker converts once (worker.c, http_upstream.c) */
    moxy_wgen_t *g = moxy_wgen_alloc(worker, c);
    assert(g);
    g->pools = NULL;
    moxy_wgen_release(g);
    probe_seconds(c->timeouts.client_header);
    probe_seconds(c->timeouts.client_body);
    probe_seconds(c->timeouts.client_send);
    probe_seconds(c->timeouts.connect);
    probe_seconds(c->timeouts.upstream);
    probe_seconds(c->timeouts.keepalive);
    probe_seconds(c->timeouts.drain);
    probe_seconds(c->cpu_budget);
    probe_seconds(c->resolver.timeout);
    probe_seconds(c->cache.coalesce_timeout);
    probe_seconds(c->cache.stale_if_error);
    for (int i = 0; i < c->nupstreams; i++) {
        const moxy_upstream_conf_t *u = &c->upstreams[i];
        probe_seconds(u->keepalive_timeout);
        probe_seconds(u->retry_timeout);
        probe_seconds(u->resolve);
        probe_seconds(u->passive.window);
        probe_seconds(u->passive.backoff);
        probe_seconds(u->passive.max_backoff);
        if (u->health.type) {
            probe_seconds(u->health.interval);
            probe_seconds(u->health.timeout);
        }
        for (int j = 0; j < u->nservers; j++) probe_seconds(u->servers[j].slow_start);
        assert(u->nservers > 0);
    }
    for (int i = 0; i < c->nlistens; i++) assert(c->listens[i].addr.salen > 0);
    assert(c->nlistens > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) init();
    unsigned slot = fuzz_take_byte(&data, &size) % MOXY_ARRAY_LEN(SLOTS);
    unsigned how = fuzz_take_byte(&data, &size);

    /* the values */
    const char *v[MAX_VALUES];
    size_t vn[MAX_VALUES];
    int nv = 0;
    const char *p = (const char *)data, *end = p + size;
    while (nv < MAX_VALUES) {
        const char *sep = memchr(p, 0x1f, (size_t)(end - p));
        v[nv] = p;
        vn[nv] = (size_t)((sep ? sep : end) - p);
        nv++;
        if (!sep) break;
        p = sep + 1;
    }

    /* the source: a valid configuration whose slot has the values */
    buf_t src = {0};
    puts_(&src, "-- fuzz\nreturn {\n  pid_file = false,\n  listen = \"127.0.0.1:8080\",\n"
                "  upstreams = { app = { servers = { \"127.0.0.1:9000\" } } },\n  ");
    for (const char *t = SLOTS[slot]; *t;) {
        if (t[0] == '@' && t[1] >= '1' && t[1] <= '4' && t[2] == '@') {
            int i = t[1] - '1';
            if (i < nv) put_value(&src, v[i], vn[i], how >> (2 * i));
            else puts_(&src, "nil");
            t += 3;
        } else {
            put(&src, t++, 1);
        }
    }
    puts_(&src, "\n}\n");

    /* check (Lua), then copy (C) */
    lua_prev = 0;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, src.p, src.n);
    lua_pushstring(L, PATH);
    if (lua_pcall(L, 2, 2, 0) != 0) {
        fprintf(stderr, "config_fuzz: the loader raised: %s\nsource:\n%s\n", lua_tostring(L, -1), src.p);
        abort();
    }
    if (lua_isnil(L, -2)) {
        assert(lua_istable(L, -1));
        int n = (int)lua_objlen(L, -1);
        assert(n > 0);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *line = lua_tostring(L, -1);
            if (!line) abort();
            check_error_line(line);
            lua_pop(L, 1);
        }
    } else {
        char *err = NULL;
        size_t errlen = 0;
        FILE *ef = open_memstream(&err, &errlen);
        moxy_conf_t *c = moxy_conf_from_table(L, -2, PATH, ef);
        fclose(ef);
        if (!c) {
            fprintf(stderr, "config_fuzz: the Lua check accepted what config.c refused: %s\nsource:\n%s\n", err,
                    src.p);
            abort();
        }
        free(err);
        assert(moxy_upstreams_create(c, NULL) == MOXY_OK);
        probe_conf(c);
        moxy_conf_release(c);
        moxy_stats_free(worker);
    }
    lua_settop(L, top);
    /* the state lives for the whole run: collect what each input left */
    lua_gc(L, LUA_GCSTEP, 64);
    free(src.p);
    return 0;
}

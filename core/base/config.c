/*
 * config.c -- the configuration in C; see config.h.  The checking is done by
 * lua/moxy/config.lua, which returns a normalised table; this file only
 * copies that table into C structures.
 */
#include "base/config.h"
#include "base/log.h"
#include "base/lua_vm.h"
#include "base/addr.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* limits.buffer_memory's default: 1 GiB, or a quarter of the machine's
 * memory when that is less. */
static double default_buffer_memory(void)
{
    double gib = 1024.0 * 1024 * 1024;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return gib;
    double quarter = (double)pages * (double)page / 4;
    return quarter < gib ? quarter : gib;
}

static char *field_str(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    char *r = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return r;
}

static double field_num(lua_State *L, int idx, const char *key, double dflt)
{
    lua_getfield(L, idx, key);
    double r = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return r;
}

/* Read the {text, host, port, family} table at the top of the stack. */
static int read_addr(lua_State *L, moxy_addr_t *a)
{
    int t = lua_gettop(L);
    a->text = field_str(L, t, "text");
    if (field_num(L, t, "family", 4) == 0) return MOXY_OK; /* a name: resolved later */
    char *host = field_str(L, t, "host");
    int port = (int)field_num(L, t, "port", 0);
    int family = (int)field_num(L, t, "family", 4);
    int rc = MOXY_ERROR;
    memset(&a->sa, 0, sizeof(a->sa));
    if (host && family == 4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a->sa;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) rc = MOXY_OK;
        a->salen = sizeof(*sin);
    } else if (host) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->sa;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) rc = MOXY_OK;
        a->salen = sizeof(*sin6);
    }
    free(host);
    return rc;
}

int moxy_conf_upstream_index(const moxy_conf_t *conf, const char *name, size_t len)
{
    for (int i = 0; i < conf->nupstreams; i++) {
        if (strlen(conf->upstreams[i].name) == len && memcmp(conf->upstreams[i].name, name, len) == 0)
            return i;
    }
    return -1;
}

/* cache.shard of the cache table at idx (config.lua checked it: its pool
 * exists and has self among its servers): c->cache.shard_*.  MOXY_OK, or
 * MOXY_ERROR (said on err). */
static int read_cache_shard(lua_State *L, int idx, moxy_conf_t *c, FILE *err)
{
    lua_getfield(L, idx, "shard");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return MOXY_OK;
    }
    int t = lua_gettop(L);
    char *pool = field_str(L, t, "pool"), *self = field_str(L, t, "self");
    c->cache.shard_secret = field_str(L, t, "secret");
    lua_pop(L, 1);
    int i = pool ? moxy_conf_upstream_index(c, pool, strlen(pool)) : -1;
    c->cache.shard_self = -1;
    for (int j = 0; i >= 0 && self && j < c->upstreams[i].nservers; j++)
        if (strcmp(c->upstreams[i].servers[j].addr.text, self) == 0) c->cache.shard_self = j;
    int ok = i >= 0 && c->cache.shard_self >= 0;
    if (!ok) fprintf(err, "%s: cache.shard: pool %s has no server %s\n", c->path, pool ? pool : "?", self ? self : "?");
    c->cache.shard = ok;
    c->cache.shard_pool = i;
    free(pool);
    free(self);
    return ok ? MOXY_OK : MOXY_ERROR;
}

static int field_bool(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    int r = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return r;
}

static void tls_conf_free(moxy_tls_conf_t *tc)
{
    if (!tc) return;
    for (int i = 0; i < tc->ncerts; i++) {
        free(tc->certs[i].cert);
        free(tc->certs[i].key);
        free(tc->certs[i].ocsp);
    }
    free(tc->certs);
    free(tc->ciphers);
    free(tc->ciphersuites);
    free(tc->groups);
    free(tc->client_ca);
    free(tc->ticket_keys);
    free(tc);
}

/* The listener at l's `tls` (checked by config.lua: certificates with
 * absolute paths, versions 12/13) into ls->tls; nothing without one. */
static int read_tls(lua_State *L, int l, moxy_listen_conf_t *ls)
{
    lua_getfield(L, l, "tls");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return MOXY_OK;
    }
    int t = lua_gettop(L);
    moxy_tls_conf_t *tc = calloc(1, sizeof(*tc));
    ls->tls = tc;
    if (!tc) goto err;
    tc->refuse_unknown = field_bool(L, t, "refuse_unknown");
    tc->min_version = (int)field_num(L, t, "min_version", 12);
    tc->max_version = (int)field_num(L, t, "max_version", 13);
    tc->ciphers = field_str(L, t, "ciphers");
    tc->ciphersuites = field_str(L, t, "ciphersuites");
    tc->groups = field_str(L, t, "groups");
    tc->client_ca = field_str(L, t, "client_ca");
    tc->ticket_keys = field_str(L, t, "ticket_keys");
    tc->verify_clients = (int)field_num(L, t, "verify_clients", 0);
    tc->verify_depth = (int)field_num(L, t, "verify_depth", 3);
    tc->hello_cache = (int)field_num(L, t, "hello_cache", 1000);
    lua_getfield(L, t, "certificates");
    int n = (int)lua_objlen(L, -1);
    tc->certs = calloc((size_t)n + 1, sizeof(*tc->certs));
    if (!tc->certs) goto err;
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, -1, i + 1);
        tc->certs[i].cert = field_str(L, lua_gettop(L), "cert");
        tc->certs[i].key = field_str(L, lua_gettop(L), "key");
        tc->certs[i].ocsp = field_str(L, lua_gettop(L), "ocsp");
        tc->ncerts++;
        lua_pop(L, 1);
        if (!tc->certs[i].cert || !tc->certs[i].key) goto err;
    }
    lua_pop(L, 2);
    return MOXY_OK;
err:
    lua_settop(L, t - 1);
    return MOXY_ERROR;
}

/* The list of statuses at t[key] as a set (empty when absent). */
static void read_statuses(lua_State *L, int t, const char *key, moxy_status_set_t *set)
{
    memset(set, 0, sizeof(*set));
    lua_getfield(L, t, key);
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        int st = (int)lua_tointeger(L, -1);
        if (st >= 0 && st < 640) set->bits[st >> 6] |= 1ull << (st & 63);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int balance_of(lua_State *L, int u)
{
    static const char *names[] = {"round_robin", "least_conn", "ewma", "hash", "random"};
    char *b = field_str(L, u, "balance");
    int r = MOXY_BAL_ROUND_ROBIN;
    for (int i = 0; b && i < (int)MOXY_ARRAY_LEN(names); i++)
        if (strcmp(b, names[i]) == 0) r = i;
    free(b);
    return r;
}

static void read_passive(lua_State *L, int u, moxy_upstream_conf_t *up)
{
    lua_getfield(L, u, "passive");
    int p = lua_gettop(L);
    up->passive.failures = lua_istable(L, p) ? (int)field_num(L, p, "failures", 3) : 0;
    up->passive.window = field_num(L, p, "window", 10);
    up->passive.backoff = field_num(L, p, "backoff", 10);
    up->passive.max_backoff = field_num(L, p, "max_backoff", 300);
    up->passive.max_ejected = field_num(L, p, "max_ejected", 0.5);
    read_statuses(L, p, "statuses", &up->passive.statuses);
    lua_pop(L, 1);
}

static void read_health(lua_State *L, int u, moxy_upstream_conf_t *up)
{
    lua_getfield(L, u, "health");
    int h = lua_gettop(L);
    if (lua_istable(L, h)) {
        char *type = field_str(L, h, "type");
        up->health.type = type && strcmp(type, "tcp") == 0 ? MOXY_CHECK_TCP : MOXY_CHECK_HTTP;
        free(type);
        up->health.method = field_str(L, h, "method");
        up->health.path = field_str(L, h, "path");
        up->health.host = field_str(L, h, "host");
        up->health.body = field_str(L, h, "body");
        read_statuses(L, h, "statuses", &up->health.statuses);
        up->health.interval = field_num(L, h, "interval", 5);
        up->health.timeout = field_num(L, h, "timeout", 2);
        up->health.healthy = (int)field_num(L, h, "healthy", 2);
        up->health.unhealthy = (int)field_num(L, h, "unhealthy", 2);
    }
    lua_pop(L, 1);
}

static int level_of(const char *s)
{
    for (int i = 0; i <= MOXY_LOG_DEBUG; i++)
        if (s && strcmp(s, moxy_log_level_names[i]) == 0) return i;
    return MOXY_LOG_INFO;
}

/* The list of {addr, family, bits} tables at t[key] (what config.lua's
 * cidr() makes) as *out, *n entries. */
static int read_cidrs(lua_State *L, int t, const char *key, moxy_cidr_t **out, int *n, const char *path, FILE *err)
{
    lua_getfield(L, t, key);
    int len = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    *n = 0;
    *out = calloc((size_t)len + 1, sizeof(**out));
    if (!*out) return MOXY_ERROR;
    for (int i = 0; i < len; i++) {
        lua_rawgeti(L, -1, i + 1);
        int e = lua_gettop(L);
        char *addr = field_str(L, e, "addr");
        int family = (int)field_num(L, e, "family", 4);
        int bits = (int)field_num(L, e, "bits", family == 4 ? 32 : 128);
        moxy_cidr_t *m = &(*out)[*n];
        int ok = addr && inet_pton(family == 4 ? AF_INET : AF_INET6, addr, m->addr) == 1;
        free(addr);
        if (!ok) {
            fprintf(err, "%s: %s[%d]: bad address\n", path, key, i + 1);
            return MOXY_ERROR;
        }
        moxy_cidr_init(m, family, bits);
        (*n)++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return MOXY_OK;
}

/* trusted_proxies and real_ip_header. */
static int read_trusted(lua_State *L, int t, moxy_conf_t *c, FILE *err)
{
    char *h = field_str(L, t, "real_ip_header");
    c->real_ip_header = h && strcmp(h, "Forwarded") == 0 ? MOXY_REALIP_FORWARDED : MOXY_REALIP_XFF;
    free(h);
    return read_cidrs(L, t, "trusted_proxies", &c->trusted, &c->ntrusted, c->path, err);
}

/* Copy the normalised table at index t into conf.  On a bad address (which
 * the Lua side should have caught) prints it and returns MOXY_ERROR. */
/* The normalised compression table at the top of the stack into cc.
 * MOXY_ERROR: out of memory. */
static int read_compress(lua_State *L, moxy_compress_conf_t *cc)
{
    int t = lua_gettop(L);
    cc->enabled = field_bool(L, t, "enabled");
    cc->min_length = (uint64_t)field_num(L, t, "min_length", 256);
    lua_getfield(L, t, "encodings");
    cc->norder = 0;
    for (int i = 1; i <= (int)lua_objlen(L, -1) && cc->norder < 3; i++) {
        lua_rawgeti(L, -1, i);
        cc->order[cc->norder++] = (uint8_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    static const char *const names[4] = {NULL, "gzip", "br", "zstd"};
    for (int e = 1; e < 4; e++) {
        lua_getfield(L, t, names[e]);
        int ct = lua_gettop(L);
        cc->enc[e].level = (int)field_num(L, ct, "level", 1);
        cc->enc[e].window = (int)field_num(L, ct, "window", 15);
        cc->enc[e].mem_level = (int)field_num(L, ct, "mem_level", 8);
        lua_pop(L, 1);
    }
    lua_getfield(L, t, "decompress");
    int d = lua_gettop(L);
    cc->max_size = (uint64_t)field_num(L, d, "max_size", 256.0 * 1024 * 1024);
    cc->max_ratio = field_num(L, d, "max_ratio", 100);
    lua_getfield(L, d, "codings");
    cc->decompress = 0;
    for (int e = 1; e < 4; e++) {
        lua_rawgeti(L, -1, e);
        if (lua_toboolean(L, -1)) cc->decompress |= 1u << e;
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    lua_getfield(L, t, "types");
    cc->ntypes = (int)lua_objlen(L, -1);
    cc->types = calloc((size_t)cc->ntypes + 1, sizeof(char *));
    if (!cc->types) cc->ntypes = 0;
    for (int i = 0; i < cc->ntypes; i++) {
        lua_rawgeti(L, -1, i + 1);
        cc->types[i] = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
        lua_pop(L, 1);
        if (!cc->types[i]) {
            lua_pop(L, 1);
            return MOXY_ERROR;
        }
    }
    lua_pop(L, 1);
    return cc->types ? MOXY_OK : MOXY_ERROR;
}

/* A listener's or a pool's compression (key "compression" of the table at
 * idx): *out made, or left NULL when it has none. */
static int read_compress_field(lua_State *L, int idx, moxy_compress_conf_t **out)
{
    lua_getfield(L, idx, "compression");
    int rc = MOXY_OK;
    if (lua_istable(L, -1)) {
        *out = calloc(1, sizeof(**out));
        rc = *out ? read_compress(L, *out) : MOXY_ERROR;
    }
    lua_pop(L, 1);
    return rc;
}

static void compress_free(moxy_compress_conf_t *cc)
{
    for (int i = 0; cc->types && i < cc->ntypes; i++) free(cc->types[i]);
    free(cc->types);
}

int moxy_mask_conf_set(moxy_mask_conf_t *m, const char *const *names, int n, const char *server, const char *via)
{
    memset(m, 0, sizeof(*m));
    if (n > UINT16_MAX) n = UINT16_MAX; /* config.lua allows 256 */
    moxy_field_set_t *set = &m->headers;
    if (n > 0 && !(set->names = calloc((size_t)n, sizeof(*set->names)))) return MOXY_ERROR;
    /* by length, so that a field is compared with the names of its length
     * only (start[]): counted, then placed */
    uint16_t count[64] = {0};
    for (int i = 0; i < n; i++) count[MOXY_MIN(strlen(names[i]), 63)]++;
    for (int b = 0; b < 64; b++) set->start[b + 1] = (uint16_t)(set->start[b] + count[b]);
    uint16_t next[64];
    memcpy(next, set->start, sizeof(next));
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]), b = MOXY_MIN(len, 63);
        char *name = strdup(names[i]);
        if (!name) return MOXY_ERROR;
        int lit = 1;
        for (size_t k = 0; k < len; k++) {
            unsigned char ch = (unsigned char)name[k];
            if ((unsigned)(ch - 'A') < 26u) name[k] = (char)(ch | 0x20);
            lit &= ((unsigned)(name[k] - 'a') < 26u) || ((unsigned)(name[k] - '0') < 10u) || name[k] == '-';
        }
        set->names[next[b]++] = (moxy_field_name_t){name, (uint32_t)len, (uint32_t)lit};
        set->n++;
        set->lens |= 1ull << b;
    }
    if (server && !(m->server = strdup(server))) return MOXY_ERROR;
    m->server_len = m->server ? (uint32_t)strlen(m->server) : 0;
    if (!via) return MOXY_OK;
    if (!(m->via = strdup(via))) return MOXY_ERROR;
    static const char *const protocols[3] = {"1.0", "1.1", "2"};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(protocols[i]) + 1 + strlen(via);
        if (!(m->via_value[i] = malloc(len + 1))) return MOXY_ERROR;
        snprintf(m->via_value[i], len + 1, "%s %s", protocols[i], via);
        m->via_len[i] = (uint32_t)len;
    }
    return MOXY_OK;
}

void moxy_mask_conf_free(moxy_mask_conf_t *m)
{
    for (uint32_t i = 0; m->headers.names && i < m->headers.start[64]; i++)
        free((char *)m->headers.names[i].name); /* a slot not filled (out of memory) is NULL */
    free(m->headers.names);
    free(m->server);
    free(m->via);
    for (int i = 0; i < 3; i++) free(m->via_value[i]);
    memset(m, 0, sizeof(*m));
}

/* The normalised mask table at the top of the stack ({ headers = { lower-case
 * names }, server = s or nil, via = s or nil }) into m.  MOXY_ERROR: out of
 * memory. */
static int read_mask(lua_State *L, moxy_mask_conf_t *m)
{
    int t = lua_gettop(L);
    lua_getfield(L, t, "headers");
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    const char **names = calloc((size_t)n + 1, sizeof(*names));
    if (!names) {
        lua_settop(L, t);
        return MOXY_ERROR;
    }
    int k = 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, t + 1, i); /* left on the stack: names point into them */
        if (lua_type(L, -1) == LUA_TSTRING) names[k++] = lua_tostring(L, -1);
    }
    lua_getfield(L, t, "server");
    const char *server = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_getfield(L, t, "via");
    const char *via = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int rc = moxy_mask_conf_set(m, names, k, server, via);
    free(names);
    lua_settop(L, t);
    return rc;
}

static int read_conf(lua_State *L, int t, moxy_conf_t *c, FILE *err)
{
    c->workers = (int)field_num(L, t, "workers", 0);
    c->dir = field_str(L, t, "dir");
    c->pid_file = field_str(L, t, "pid_file");
    c->pid_file_set = field_bool(L, t, "pid_file_set");
    c->watch = field_bool(L, t, "watch");

    lua_getfield(L, t, "compression");
    c->compress_memory = (size_t)field_num(L, lua_gettop(L), "memory", 128.0 * 1024 * 1024);
    if (read_compress(L, &c->compress) != MOXY_OK) {
        fprintf(err, "%s: compression: out of memory\n", c->path);
        return MOXY_ERROR;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "mask");
    if (lua_istable(L, -1) && read_mask(L, &c->mask) != MOXY_OK) {
        fprintf(err, "%s: mask: out of memory\n", c->path);
        return MOXY_ERROR;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "upstreams");
    c->nupstreams = (int)lua_objlen(L, -1);
    c->upstreams = calloc((size_t)c->nupstreams + 1, sizeof(*c->upstreams));
    for (int i = 0; i < c->nupstreams; i++) {
        lua_rawgeti(L, -1, i + 1);
        int u = lua_gettop(L);
        moxy_upstream_conf_t *up = &c->upstreams[i];
        up->name = field_str(L, u, "name");
        up->host = field_str(L, u, "host");
        lua_getfield(L, u, "tls");
        if (lua_istable(L, -1)) {
            int t = lua_gettop(L);
            moxy_tls_origin_conf_t *tc = calloc(1, sizeof(*tc));
            if (!tc) {
                fprintf(err, "%s: upstreams.%s.tls: out of memory\n", c->path, up->name);
                return MOXY_ERROR;
            }
            tc->verify = field_bool(L, t, "verify");
            tc->ca = field_str(L, t, "ca");
            tc->name = field_str(L, t, "name");
            tc->client_cert = field_str(L, t, "client_cert");
            tc->client_key = field_str(L, t, "client_key");
            tc->h2 = field_bool(L, t, "h2");
            up->tls = tc;
        }
        lua_pop(L, 1);
        up->keepalive = (int)field_num(L, u, "keepalive", 64);
        up->keepalive_timeout = field_num(L, u, "keepalive_timeout", 60);
        up->tries = (int)field_num(L, u, "tries", 2);
        char *proto = field_str(L, u, "protocol");
        up->protocol = proto && strcmp(proto, "h2") == 0 ? MOXY_UP_H2 : MOXY_UP_HTTP1;
        free(proto);
        up->max_streams = (int)field_num(L, u, "max_streams", 100);
        if (read_compress_field(L, u, &up->compress) != MOXY_OK) {
            fprintf(err, "%s: upstreams.%s: out of memory\n", c->path, up->name ? up->name : "?");
            return MOXY_ERROR;
        }
        up->balance = balance_of(L, u);
        up->retry_timeout = field_num(L, u, "retry_timeout", 0);
        read_statuses(L, u, "retry_statuses", &up->retry_statuses);
        up->retry_budget = field_num(L, u, "retry_budget", 0.2);
        up->retry_budget_min = (int)field_num(L, u, "retry_budget_min", 10);
        up->resolve = field_num(L, u, "resolve", 30);
        read_passive(L, u, up);
        read_health(L, u, up);
        lua_getfield(L, u, "servers");
        up->nservers = (int)lua_objlen(L, -1);
        up->servers = calloc((size_t)up->nservers + 1, sizeof(*up->servers));
        for (int j = 0; j < up->nservers; j++) {
            lua_rawgeti(L, -1, j + 1);
            int sv = lua_gettop(L);
            moxy_server_conf_t *s = &up->servers[j];
            s->weight = (int)field_num(L, sv, "weight", 1);
            s->backup = field_bool(L, sv, "backup");
            s->drain = field_bool(L, sv, "drain");
            s->max_conns = (int)field_num(L, sv, "max_conns", 0);
            s->slow_start = field_num(L, sv, "slow_start", 0);
            s->name = field_str(L, sv, "name");
            s->port = (uint16_t)field_num(L, sv, "port", 0);
            if (read_addr(L, &s->addr) != MOXY_OK) {
                fprintf(err, "%s: upstreams.%s: bad address\n", c->path, up->name);
                return MOXY_ERROR;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);

    char *dflt = field_str(L, t, "default_upstream");
    c->default_upstream = dflt ? moxy_conf_upstream_index(c, dflt, strlen(dflt)) : -1;
    free(dflt);

    lua_getfield(L, t, "listen");
    c->nlistens = (int)lua_objlen(L, -1);
    c->listens = calloc((size_t)c->nlistens + 1, sizeof(*c->listens));
    for (int i = 0; i < c->nlistens; i++) {
        lua_rawgeti(L, -1, i + 1);
        int l = lua_gettop(L);
        moxy_listen_conf_t *ls = &c->listens[i];
        ls->name = field_str(L, l, "name");
        ls->backlog = (int)field_num(L, l, "backlog", 4096);
        ls->proxy_protocol = field_bool(L, l, "proxy_protocol");
        ls->http2 = field_bool(L, l, "http2");
        if (read_compress_field(L, l, &ls->compress) != MOXY_OK) {
            fprintf(err, "%s: listen[%d]: out of memory\n", c->path, i + 1);
            return MOXY_ERROR;
        }
        lua_getfield(L, l, "mask");
        if (lua_istable(L, -1) &&
            (!(ls->mask = calloc(1, sizeof(*ls->mask))) || read_mask(L, ls->mask) != MOXY_OK)) {
            fprintf(err, "%s: listen[%d]: out of memory\n", c->path, i + 1);
            return MOXY_ERROR;
        }
        lua_pop(L, 1);
        ls->upgrade = field_str(L, l, "upgrade");
        if (!ls->upgrade) ls->upgrade = strdup("websocket");
        if (read_tls(L, l, ls) != MOXY_OK) {
            fprintf(err, "%s: listen[%d]: out of memory\n", c->path, i + 1);
            return MOXY_ERROR;
        }
        char *up = field_str(L, l, "upstream");
        ls->upstream = up ? moxy_conf_upstream_index(c, up, strlen(up)) : -1;
        free(up);
        lua_getfield(L, l, "addr");
        if (read_addr(L, &ls->addr) != MOXY_OK) {
            fprintf(err, "%s: listen[%d]: bad address\n", c->path, i + 1);
            return MOXY_ERROR;
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);

    if (read_trusted(L, t, c, err) != MOXY_OK) return MOXY_ERROR;

    lua_getfield(L, t, "scripts");
    c->nscripts = (int)lua_objlen(L, -1);
    c->scripts = calloc((size_t)c->nscripts + 1, sizeof(char *));
    c->scripts_jit = calloc((size_t)c->nscripts + 1, sizeof(int));
    c->scripts_src = calloc((size_t)c->nscripts + 1, sizeof(char *));
    for (int i = 0; i < c->nscripts; i++) {
        lua_rawgeti(L, -1, i + 1);
        c->scripts[i] = field_str(L, lua_gettop(L), "path");
        c->scripts_src[i] = field_str(L, lua_gettop(L), "source");
        lua_getfield(L, -1, "jit");
        c->scripts_jit[i] = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "shared");
    c->nshared = (int)lua_objlen(L, -1);
    c->shared = calloc((size_t)c->nshared + 1, sizeof(*c->shared));
    for (int i = 0; i < c->nshared; i++) {
        lua_rawgeti(L, -1, i + 1);
        c->shared[i].name = field_str(L, lua_gettop(L), "name");
        c->shared[i].size = (size_t)field_num(L, lua_gettop(L), "size", 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "geoip");
    c->ngeoip = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    c->geoip = calloc((size_t)c->ngeoip + 1, sizeof(*c->geoip));
    for (int i = 0; i < c->ngeoip; i++) {
        lua_rawgeti(L, -1, i + 1);
        c->geoip[i].name = field_str(L, lua_gettop(L), "name");
        c->geoip[i].path = field_str(L, lua_gettop(L), "path");
        c->geoip[i].line = (int)field_num(L, lua_gettop(L), "line", 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "cache");
    if (lua_istable(L, -1)) {
        c->cache.enabled = 1;
        c->cache.size = (size_t)field_num(L, lua_gettop(L), "size", 256.0 * 1024 * 1024);
        c->cache.max_object = (size_t)field_num(L, lua_gettop(L), "max_object", 16.0 * 1024 * 1024);
        c->cache.coalesce_timeout = field_num(L, lua_gettop(L), "coalesce_timeout", 5);
        c->cache.stale_if_error = field_num(L, lua_gettop(L), "stale_if_error", 0);
        c->cache.request_directives = field_bool(L, lua_gettop(L), "request_directives");
        lua_getfield(L, -1, "sendfile");
        c->cache.sendfile = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : MOXY_SENDFILE_AUTO;
        lua_pop(L, 1);
        lua_getfield(L, -1, "targeted_fields");
        c->cache.ntargeted = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        c->cache.targeted = calloc((size_t)c->cache.ntargeted + 1, sizeof(char *));
        if (!c->cache.targeted) c->cache.ntargeted = 0;
        for (int i = 0; i < c->cache.ntargeted; i++) {
            lua_rawgeti(L, -1, i + 1);
            c->cache.targeted[i] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (!c->cache.targeted[i]) {
                fprintf(err, "%s: out of memory\n", c->path);
                return MOXY_ERROR;
            }
        }
        lua_pop(L, 1);
        if (read_cidrs(L, lua_gettop(L), "purge", &c->cache.purge, &c->cache.npurge, c->path, err) != MOXY_OK)
            return MOXY_ERROR;
        if (read_cache_shard(L, lua_gettop(L), c, err) != MOXY_OK) return MOXY_ERROR;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "admin");
    if (lua_istable(L, -1)) {
        c->admin.enabled = 1;
        c->admin.token = field_str(L, lua_gettop(L), "token");
        lua_getfield(L, -1, "listen");
        if (read_addr(L, &c->admin.addr) != MOXY_OK) {
            fprintf(err, "%s: admin.listen: bad address\n", c->path);
            return MOXY_ERROR;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "fleet");
    if (lua_istable(L, -1)) {
        int fl = lua_gettop(L);
        c->fleet.enabled = 1;
        c->fleet.node = field_str(L, fl, "node");
        c->fleet.channel = field_str(L, fl, "channel");
        lua_getfield(L, fl, "secret");
        if (lua_isstring(L, -1)) {
            size_t n;
            const char *s = lua_tolstring(L, -1, &n);
            if ((c->fleet.secret = malloc(n + 1))) {
                memcpy(c->fleet.secret, s, n + 1);
                c->fleet.secret_len = n;
            }
        }
        lua_pop(L, 1);
        c->fleet.max_age = field_num(L, fl, "max_age", 30);
        lua_getfield(L, fl, "redis");
        int rd = lua_gettop(L);
        c->fleet.host = field_str(L, rd, "host");
        c->fleet.port = (int)field_num(L, rd, "port", 6379);
        c->fleet.db = (int)field_num(L, rd, "db", 0);
        c->fleet.user = field_str(L, rd, "user");
        c->fleet.password = field_str(L, rd, "password");
        c->fleet.tls = (int)field_num(L, rd, "tls", 0);
        c->fleet.server_name = field_str(L, rd, "server_name");
        c->fleet.timeout = field_num(L, rd, "timeout", 1);
        c->fleet.connect_timeout = field_num(L, rd, "connect_timeout", 1);
        lua_pop(L, 1);
        if (!c->fleet.channel || !c->fleet.host) {
            fprintf(err, "%s: fleet: out of memory\n", c->path);
            lua_pop(L, 1);
            return MOXY_ERROR;
        }
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "resolver");
    int rs = lua_gettop(L);
    c->resolver.timeout = field_num(L, rs, "timeout", 5);
    lua_getfield(L, rs, "nameservers");
    c->resolver.nnameservers = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    c->resolver.nameservers = calloc((size_t)c->resolver.nnameservers + 1, sizeof(char *));
    for (int i = 0; i < c->resolver.nnameservers; i++) {
        lua_rawgeti(L, -1, i + 1);
        c->resolver.nameservers[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 2);

    lua_getfield(L, t, "lua");
    c->cpu_budget = field_num(L, lua_gettop(L), "cpu_budget", 0.05);
    c->lua_memory = (size_t)field_num(L, lua_gettop(L), "memory", 512.0 * 1024 * 1024);
    lua_pop(L, 1);

    lua_getfield(L, t, "limits");
    int lim = lua_gettop(L);
    c->limits.header_bytes = (size_t)field_num(L, lim, "header_bytes", 32768);
    c->limits.headers = (int)field_num(L, lim, "headers", 100);
    c->limits.uri_bytes = (size_t)field_num(L, lim, "uri_bytes", 8192);
    c->limits.body_bytes = (uint64_t)field_num(L, lim, "body_bytes", 64.0 * 1024 * 1024);
    c->limits.connections = (int)field_num(L, lim, "connections", 10000);
    c->limits.connections_per_client = (int)field_num(L, lim, "connections_per_client", 1024);
    c->limits.buffer_memory = (size_t)field_num(L, lim, "buffer_memory", default_buffer_memory());
    lua_pop(L, 1);

    lua_getfield(L, t, "http2");
    int h2 = lua_gettop(L);
    c->http2.max_concurrent_streams = (int)field_num(L, h2, "max_concurrent_streams", 128);
    c->http2.stream_window = (int)field_num(L, h2, "stream_window", 65536);
    c->http2.header_table_size = (int)field_num(L, h2, "header_table_size", 4096);
    c->http2.max_continuations = (int)field_num(L, h2, "max_continuations", 8);
    c->http2.max_resets = (int)field_num(L, h2, "max_resets", 200);
    c->http2.reset_rate = (int)field_num(L, h2, "reset_rate", 33);
    c->http2.max_control_frames = (int)field_num(L, h2, "max_control_frames", 1000);
    lua_pop(L, 1);

    lua_getfield(L, t, "timeouts");
    int to = lua_gettop(L);
    c->timeouts.client_header = field_num(L, to, "client_header", 10);
    c->timeouts.client_body = field_num(L, to, "client_body", 30);
    c->timeouts.client_send = field_num(L, to, "client_send", 60);
    c->timeouts.connect = field_num(L, to, "connect", 3);
    c->timeouts.upstream = field_num(L, to, "upstream", 60);
    c->timeouts.keepalive = field_num(L, to, "keepalive", 75);
    c->timeouts.drain = field_num(L, to, "drain", 60);
    c->timeouts.linger = field_num(L, to, "linger", 5);
    lua_pop(L, 1);

    lua_getfield(L, t, "log");
    int lg = lua_gettop(L);
    c->log.access = field_str(L, lg, "access");
    char *fmt = field_str(L, lg, "format");
    c->log.format = fmt && strcmp(fmt, "json") == 0 ? MOXY_ALOG_JSON : MOXY_ALOG_COMBINED;
    lua_getfield(L, lg, "fields");
    int nf = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (int i = 1; i <= nf && c->log.nfields < (int)sizeof(c->log.fields); i++) {
        lua_rawgeti(L, -1, i);
        int f = (int)lua_tointeger(L, -1);
        if (f >= 0 && f < MOXY_ALF_COUNT) c->log.fields[c->log.nfields++] = (unsigned char)f;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    free(fmt);
    c->log.error = field_str(L, lg, "error");
    char *lvl = field_str(L, lg, "level");
    c->log.level = level_of(lvl);
    free(lvl);
    lua_pop(L, 1);
    return MOXY_OK;
}

moxy_conf_t *moxy_conf_load(const char *path, FILE *err)
{
    moxy_conf_t *c = NULL;
    /* the file's own require, dofile and loadfile read beside it */
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof(dir), ".");
    else if (slash == path) snprintf(dir, sizeof(dir), "/");
    else snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    lua_State *L = moxy_lua_new(dir);
    if (!L) {
        fprintf(err, "moxy: out of memory\n");
        return NULL;
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moxy.config");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(err, "moxy: cannot load moxy's Lua modules from %s: %s\n", moxy_lua_dir(),
                lua_tostring(L, -1));
        goto err;
    }
    lua_getfield(L, -1, "load");
    lua_pushstring(L, path);
    if (lua_pcall(L, 1, 2, 0) != 0) {
        fprintf(err, "%s: %s\n", path, lua_tostring(L, -1));
        goto err;
    }
    if (lua_isnil(L, -2)) {
        int n = (int)lua_objlen(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            fprintf(err, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        goto err;
    }
    lua_pop(L, 1);
    c = moxy_conf_from_table(L, lua_gettop(L), path, err);
    if (!c) goto err;
    moxy_lua_close(L);
    return c;

err:
    moxy_lua_close(L);
    return NULL;
}

moxy_conf_t *moxy_conf_from_table(lua_State *L, int idx, const char *path, FILE *err)
{
    int top = lua_gettop(L);
    if (idx < 0) idx = top + idx + 1;
    moxy_conf_t *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(err, "moxy: out of memory\n");
        return NULL;
    }
    atomic_store(&c->refs, 1);
    c->path = strdup(path);
    if (!c->path || read_conf(L, idx, c, err) != MOXY_OK) {
        if (!c->path) fprintf(err, "moxy: out of memory\n");
        moxy_conf_release(c);
        c = NULL;
    }
    lua_settop(L, top); /* read_conf leaves its stack as it was only when it succeeds */
    return c;
}

void moxy_conf_hold(moxy_conf_t *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void moxy_conf_release(moxy_conf_t *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    for (int i = 0; i < c->nupstreams; i++) {
        moxy_upstream_conf_t *u = &c->upstreams[i];
        for (int j = 0; j < u->nservers; j++) {
            free(u->servers[j].addr.text);
            free(u->servers[j].name);
        }
        free(u->servers);
        free(u->name);
        free(u->host);
        if (u->tls) {
            free(u->tls->ca);
            free(u->tls->name);
            free(u->tls->client_cert);
            free(u->tls->client_key);
            free(u->tls);
        }
        free(u->health.method);
        free(u->health.path);
        free(u->health.host);
        free(u->health.body);
        if (u->compress) compress_free(u->compress);
        free(u->compress);
        if (u->state_owner) moxy_conf_release(u->state_owner);
        else if (u->state) u->state_free(u->state);
    }
    free(c->upstreams);
    for (int i = 0; i < c->nlistens; i++) {
        free(c->listens[i].addr.text);
        free(c->listens[i].name);
        free(c->listens[i].upgrade);
        tls_conf_free(c->listens[i].tls);
        if (c->listens[i].compress) compress_free(c->listens[i].compress);
        free(c->listens[i].compress);
        if (c->listens[i].mask) moxy_mask_conf_free(c->listens[i].mask);
        free(c->listens[i].mask);
    }
    compress_free(&c->compress);
    moxy_mask_conf_free(&c->mask);
    free(c->listens);
    free(c->trusted);
    free(c->cache.purge);
    for (int i = 0; i < c->cache.ntargeted; i++) free(c->cache.targeted[i]);
    free(c->cache.targeted);
    free(c->cache.shard_secret);
    for (int i = 0; i < c->nscripts; i++) {
        free(c->scripts[i]);
        if (c->scripts_src) free(c->scripts_src[i]);
    }
    free(c->scripts);
    free(c->scripts_jit);
    free(c->scripts_src);
    for (int i = 0; c->resolver.nameservers && i < c->resolver.nnameservers; i++)
        free(c->resolver.nameservers[i]);
    free(c->resolver.nameservers);
    free(c->admin.addr.text);
    free(c->admin.token);
    for (int i = 0; c->geoip && i < c->ngeoip; i++) {
        free(c->geoip[i].name);
        free(c->geoip[i].path);
    }
    free(c->geoip);
    for (int i = 0; i < c->nshared; i++) free(c->shared[i].name);
    free(c->shared);
    free(c->fleet.node);
    free(c->fleet.channel);
    free(c->fleet.secret);
    free(c->fleet.host);
    free(c->fleet.user);
    free(c->fleet.password);
    free(c->fleet.server_name);
    free(c->log.access);
    free(c->log.error);
    free(c->path);
    free(c->dir);
    free(c->pid_file);
    for (int i = 0; i < c->nwatched; i++) free(c->watched[i]);
    free(c->watched);
    free(c);
}

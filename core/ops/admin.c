/*
 * admin.c -- the admin listener (see admin.h): libevent's evhttp on the main
 * thread, reading what the workers counted and the shared upstream state.
 */
#include "http/lifecycle.h"
#include "api/fleet.h"
#include "ops/admin.h"
#include "net/tls.h"
#include "ops/admin_history.h"
#include "ops/admin_page.h"
#include "cache/cache.h"
#include "api/ffi.h"
#include "ops/generation.h"
#include "base/json.h"
#include "base/log.h"
#include "ops/metrics.h"
#include "base/shared_dict.h"
#include "proxy/upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct {
    struct evhttp *http;
    struct event *tick; /* samples the status page's history every second */
    const moxy_conf_t *conf;
    moxy_worker_t *const *workers;
    int n;
    long long started_us; /* moxy_mono_us() */
    /* out of descriptors: evhttp's listener would retry accept in a busy
     * loop, libevent warning on stderr each time; it is paused instead,
     * and tried again on a timer, one line per episode */
    struct evconnlistener *lev;
    struct event *accept_retry;
    long long paused_ms;  /* when accept last started failing (monotonic); 0: it works */
    unsigned hits;        /* accepts that failed since */
    int retry_ms;         /* the next retry's delay, 100 ms .. 1 s */
    int trying;           /* the listener is on again: the timer ends the episode */
} admin;

static void accept_retry(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    if (!admin.paused_ms || !admin.lev) return;
    if (admin.trying) { /* on for a second without failing: over */
        moxy_log_warn("admin: accept resumed after %lld ms paused out of descriptors (%u failed accepts)",
                      moxy_mono_ms() - 1000 - admin.paused_ms, admin.hits);
        admin.paused_ms = 0;
        admin.hits = 0;
        admin.trying = 0;
        return;
    }
    admin.trying = 1;
    evconnlistener_enable(admin.lev);
    struct timeval tv = {1, 0};
    evtimer_add(admin.accept_retry, &tv);
}

static void accept_error(struct evconnlistener *lev, void *arg)
{
    MOXY_UNUSED(arg);
    int err = EVUTIL_SOCKET_ERROR();
    if (!moxy_errno_own_shortage(err)) {
        moxy_log_err("admin: accept: %s", strerror(err)); /* that connection is gone; the next may come */
        return;
    }
    evconnlistener_disable(lev);
    if (!admin.paused_ms) {
        admin.paused_ms = MOXY_MAX(moxy_mono_ms(), 1);
        admin.retry_ms = 100;
        moxy_log_err("admin: accept: %s; pausing the admin listener, retrying every 100..1000 ms", strerror(err));
    } else {
        admin.retry_ms = MOXY_MIN(admin.retry_ms * 2, 1000);
    }
    admin.hits++;
    admin.trying = 0;
    struct timeval tv = {admin.retry_ms / 1000, (admin.retry_ms % 1000) * 1000};
    evtimer_add(admin.accept_retry, &tv);
}

static double uptime(void)
{
    return (double)(moxy_mono_us() - admin.started_us) / 1e6;
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type, struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(b, "%s\n", text);
    reply(req, code, reason, "text/plain; charset=utf-8", b);
    evbuffer_free(b);
}

/* A reload's result as JSON: {"seq","ok","generation","at","took","message","reloads","failures"}. */
static void reload_json(struct evbuffer *b, const moxy_reload_status_t *rs)
{
    evbuffer_add_printf(b, "{\"seq\":%u,\"ok\":%s,\"generation\":%u,\"at\":%.3f,\"took\":%.3f,\"reloads\":%llu,"
                           "\"failures\":%llu,\"message\":",
                        rs->seq, rs->seq == 0 || rs->ok ? "true" : "false", rs->generation, rs->at, rs->took,
                        rs->reloads, rs->failures);
    moxy_json_str(b, rs->message);
    evbuffer_add(b, "}", 1);
}

/* /status's "compression": per coding, the responses compressed and
 * decoded and their bytes before and after; what was skipped and stopped;
 * the coders' memory. */
static void status_compression(struct evbuffer *b, const moxy_stats_total_t *tot)
{
    static const char *const enc[4] = {"identity", "gzip", "br", "zstd"};
    evbuffer_add_printf(b, ",\"compression\":{\"memory\":%lld,\"skipped\":%llu,\"decode_failures\":%llu,"
                           "\"bombs\":%llu,\"encodings\":{",
                        tot->comp_memory, tot->comp_skipped, tot->decomp_failures, tot->decomp_bombs);
    for (int e = 1; e < 4; e++)
        evbuffer_add_printf(b, "%s\"%s\":{\"compressed\":{\"responses\":%llu,\"in\":%llu,\"out\":%llu},"
                               "\"decoded\":{\"responses\":%llu,\"in\":%llu,\"out\":%llu}}",
                            e > 1 ? "," : "", enc[e], tot->comp_responses[0][e], tot->comp_in[0][e], tot->comp_out[0][e],
                            tot->comp_responses[1][e], tot->comp_in[1][e], tot->comp_out[1][e]);
    evbuffer_add(b, "}}", 2);
}

/* /status's "tls": TLS toward clients (handshakes by kind, version and
 * cipher, failures by reason, when each listener's first certificate
 * expires), or null without a TLS listener. */
static void status_tls(struct evbuffer *b, const moxy_stats_total_t *tot, const moxy_conf_t *conf)
{
    int any = 0;
    for (int i = 0; i < conf->nlistens; i++) any |= conf->listens[i].tls != NULL;
    if (!any) {
        evbuffer_add(b, ",\"tls\":null", 11);
        return;
    }
    evbuffer_add_printf(b, ",\"tls\":{\"handshakes\":{\"full\":%llu,\"resumed\":%llu},"
                           "\"versions\":{\"TLSv1.2\":%llu,\"TLSv1.3\":%llu},\"failures\":{",
                        tot->tls_handshakes[0], tot->tls_handshakes[1], tot->tls_versions[0], tot->tls_versions[1]);
    for (int k = 0; k < MOXY_TLS_FAIL_N; k++)
        evbuffer_add_printf(b, "%s\"%s\":%llu", k ? "," : "", moxy_tls_fail_names[k], tot->tls_failures[k]);
    evbuffer_add(b, "},\"ciphers\":{", 13);
    for (int k = 0; k < tot->ntls_ciphers; k++) {
        if (k) evbuffer_add(b, ",", 1);
        moxy_json_str(b, tot->tls_cipher_names[k]);
        evbuffer_add_printf(b, ":%llu", tot->tls_ciphers[k]);
    }
    evbuffer_add(b, "},\"listeners\":{", 15);
    const moxy_gen_t *gen = moxy_gen_current();
    for (int i = 0, n = 0; gen && gen->conf == conf && gen->tls && i < conf->nlistens; i++) {
        if (!gen->tls[i]) continue;
        if (n++) evbuffer_add(b, ",", 1);
        moxy_json_str(b, conf->listens[i].name);
        evbuffer_add_printf(b, ":{\"expires\":%lld}", moxy_tls_server_expiry(gen->tls[i]));
    }
    evbuffer_add(b, "}}", 2);
}

/* /status's "http2": HTTP/2 toward clients (open connections, streams,
 * refusals, floods, stalls; GOAWAYs and resets by error code, those seen). */
static void status_http2(struct evbuffer *b, const moxy_stats_total_t *tot)
{
    evbuffer_add_printf(b, ",\"http2\":{\"connections\":%lld,\"connections_total\":%llu,\"streams\":%llu,"
                           "\"requests\":%llu,\"refused\":%llu,\"floods\":%llu,\"stalls\":%llu",
                        tot->h2_conns, tot->h2_conns_total, tot->h2_streams, tot->requests_h2, tot->h2_refused,
                        tot->h2_floods, tot->h2_stalls);
    const struct {
        const char *key;
        const unsigned long long *v;
    } by_code[] = {{"goaway", tot->h2_goaway}, {"resets_sent", tot->h2_rst_sent}, {"resets_received", tot->h2_rst_recv}};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(by_code); i++) {
        evbuffer_add_printf(b, ",\"%s\":{", by_code[i].key);
        for (int k = 0, n = 0; k < MOXY_H2_CODES; k++)
            if (by_code[i].v[k])
                evbuffer_add_printf(b, "%s\"%s\":%llu", n++ ? "," : "", moxy_h2_code_names[k], by_code[i].v[k]);
        evbuffer_add(b, "}", 1);
    }
    evbuffer_add(b, "}", 1);
}

static void status(struct evhttp_request *req)
{
    const moxy_conf_t *conf = admin.conf;
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    moxy_stats_total_t tot;
    moxy_stats_sum(admin.workers, admin.n, &tot);
    unsigned long long requests = 0;
    for (int c = 0; c < 6; c++) requests += tot.requests[c];
    const moxy_reload_status_t *rs = moxy_reload_status();
    evbuffer_add_printf(b, "{\"version\":\"%s\",\"pid\":%d,\"uptime\":%.3f,\"generation\":%u,\"workers\":%d,"
                           "\"connections\":%lld,\"requests\":%llu,\"lua_errors\":%llu,\"config\":",
                        MOXY_VERSION, (int)getpid(), uptime(), rs->generation, admin.n, tot.conns, requests,
                        tot.lua_errors);
    moxy_json_str(b, conf->path);
    evbuffer_add(b, ",\"reload\":", 10);
    reload_json(b, rs);
    evbuffer_add(b, ",\"pools\":{", 10);
    long long now = moxy_mono_ms();
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_upstream_t *up = conf->upstreams[i].state;
        if (i) evbuffer_add(b, ",", 1);
        moxy_json_str(b, conf->upstreams[i].name);
        evbuffer_add_printf(b, ":{\"retries\":%llu,\"retries_denied\":%llu,\"peers\":[",
                            (unsigned long long)atomic_load(&up->retries),
                            (unsigned long long)atomic_load(&up->budget_denied));
        for (int j = 0; j < up->npeers; j++) {
            moxy_ffi_peer_t st;
            moxy_peer_snapshot(&up->peers[j], now, &st);
            if (j) evbuffer_add(b, ",", 1);
            evbuffer_add(b, "{\"addr\":", 8);
            moxy_json_str(b, st.addr);
            evbuffer_add_printf(b,
                                ",\"state\":\"%s\",\"weight\":%d,\"weight_now\":%g,\"backup\":%s,\"active\":%d,"
                                "\"requests\":%llu,\"failures\":%llu,\"fails\":%d,\"down_for\":%.3f,\"checks\":%llu,"
                                "\"ewma_ms\":%.3f,\"ejections\":%llu,\"transitions\":%llu}",
                                moxy_peer_state_name(st.state), st.weight, st.weight_now, st.backup ? "true" : "false",
                                st.active, st.requests, st.failures, st.fails, st.down_for, st.checks, st.ewma_ms,
                                st.ejections, st.transitions);
        }
        evbuffer_add(b, "]}", 2);
    }
    evbuffer_add(b, "},\"cache\":", 10);
    if (moxy_cache_enabled()) {
        moxy_cache_stats_t cs;
        moxy_cache_stats(&cs);
        evbuffer_add_printf(b, "{\"capacity\":%zu,\"used\":%zu,\"objects\":%zu,\"hits\":%llu,\"misses\":%llu,"
                               "\"stores\":%llu,\"evictions\":%llu,\"invalidations\":%llu,\"too_big\":%llu",
                            cs.capacity, cs.used, cs.objects, tot.cache_hits, tot.cache_misses, cs.stores, cs.evictions,
                            cs.invalidations, cs.too_big);
        if (conf->cache.shard) /* cache.shard's counts */
            evbuffer_add_printf(b, ",\"shard\":{\"forwarded\":%llu,\"fills\":%llu,\"fallbacks\":%llu}",
                                tot.shard_forwarded, tot.shard_fills, tot.shard_fallbacks);
        evbuffer_add(b, "}", 1);
    } else {
        evbuffer_add(b, "null", 4);
    }
    status_compression(b, &tot);
    status_tls(b, &tot, conf);
    status_http2(b, &tot);
    evbuffer_add(b, ",\"shared\":{", 11);
    for (int i = 0; i < conf->nshared; i++) {
        moxy_shdict_t *d = moxy_shdict_find(conf->shared[i].name, strlen(conf->shared[i].name));
        moxy_shdict_stats_t st = {0};
        if (d) moxy_ffi_shdict_stats(d, &st);
        if (i) evbuffer_add(b, ",", 1);
        moxy_json_str(b, conf->shared[i].name);
        evbuffer_add_printf(b, ":{\"capacity\":%zu,\"used\":%zu,\"items\":%zu,\"evictions\":%zu}", st.capacity,
                            st.used, st.items, st.evictions);
    }
    evbuffer_add(b, "}}\n", 3);
    reply(req, 200, "OK", "application/json", b);
    evbuffer_free(b);
}

static void metrics(struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b || moxy_metrics_render(b, admin.workers, admin.n, admin.conf, uptime()) != MOXY_OK) {
        if (b) evbuffer_free(b);
        evhttp_send_error(req, 500, NULL);
        return;
    }
    reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

/* 1 when req carries the admin token (compared in constant time). */
static int authorized(struct evhttp_request *req)
{
    const char *token = admin.conf->admin.token;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!token || !h || strncmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    size_t tl = strlen(token), hl = strlen(h);
    unsigned char diff = tl != hl;
    for (size_t i = 0; i < tl; i++) diff |= (unsigned char)(token[i] ^ (i < hl ? h[i] : 0));
    return diff == 0;
}

/* 1 when req may change state; else it was answered 403 (no token
 * configured) or 401. */
static int may_change(struct evhttp_request *req)
{
    if (!admin.conf->admin.token) {
        reply_text(req, 403, "Forbidden", "admin.token is not set: state-changing requests are refused");
        return 0;
    }
    if (!authorized(req)) {
        reply_text(req, 401, "Unauthorized", "a valid Authorization: Bearer <admin.token> is needed");
        return 0;
    }
    return 1;
}

/* A POST /reload waiting for its reload (req NULL: its client went away). */
typedef struct {
    struct evhttp_request *req;
} reload_wait_t;

static void reload_client_closed(struct evhttp_connection *conn, void *arg)
{
    reload_wait_t *rw = arg;
    MOXY_UNUSED(conn);
    rw->req = NULL;
}

static void reload_done(const moxy_reload_status_t *st, void *arg)
{
    reload_wait_t *rw = arg;
    struct evhttp_request *req = rw->req;
    free(rw);
    if (!req) return;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    reload_json(b, st);
    evbuffer_add(b, "\n", 1);
    if (st->ok) reply(req, 200, "OK", "application/json", b);
    else reply(req, 422, "Unprocessable Content", "application/json", b);
    evbuffer_free(b);
}

/* POST /reload: answered when the reload is over (200 with the new
 * generation, 422 with the errors; the old generation keeps serving). */
static void reload(struct evhttp_request *req)
{
    if (!may_change(req)) return;
    reload_wait_t *rw = calloc(1, sizeof(*rw));
    if (!rw) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    rw->req = req;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), reload_client_closed, rw);
    moxy_reload(reload_done, rw);
}

/* POST /purge?key=K or ?prefix=P: drop cached objects (every variant of
 * key K, or every key starting with P); 200 {"purged":N}. */
static void purge(struct evhttp_request *req)
{
    if (!may_change(req)) return;
    if (!moxy_cache_enabled()) {
        reply_text(req, 409, "Conflict", "no cache is configured (cache = {...})");
        return;
    }
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (!query || evhttp_parse_query_str(query, &q) != 0) {
        reply_text(req, 400, "Bad Request", "POST /purge?key=KEY or /purge?prefix=PREFIX (URL-encoded)");
        return;
    }
    const char *key = evhttp_find_header(&q, "key"), *prefix = evhttp_find_header(&q, "prefix");
    int n = -1;
    if (key && *key && !prefix) n = moxy_cache_drop(key, strlen(key));
    else if (prefix && *prefix && !key) n = moxy_cache_invalidate_prefix(prefix, strlen(prefix));
    if (n < 0) {
        evhttp_clear_headers(&q);
        reply_text(req, 400, "Bad Request", "POST /purge?key=KEY or /purge?prefix=PREFIX (one of them)");
        return;
    }
    const char *what = key ? key : prefix;
    int bc = moxy_fleet_publish(key ? MOXY_FLEET_PURGE : MOXY_FLEET_PURGE_PREFIX, what, strlen(what), NULL, 0);
    moxy_log_info("admin: purged %d cached object%s (%s %s)%s", n, n == 1 ? "" : "s", key ? "key" : "prefix", what,
                  bc == MOXY_OK ? ", broadcast to the fleet" : bc == MOXY_ERROR ? ", NOT broadcast to the fleet" : "");
    evhttp_clear_headers(&q);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    if (bc == MOXY_DECLINED) evbuffer_add_printf(b, "{\"purged\":%d}\n", n);
    else evbuffer_add_printf(b, "{\"purged\":%d,\"broadcast\":%s}\n", n, bc == MOXY_OK ? "true" : "false");
    reply(req, 200, "OK", "application/json", b);
    evbuffer_free(b);
}

/* POST /peers/{pool}/{peer}/drain|enable (path already checked to start with /peers/). */
static void peer_action(struct evhttp_request *req, const char *path)
{
    if (!may_change(req)) return;
    char pool[128], peer[300], action[16];
    char *decoded = evhttp_uridecode(path + 7, 0, NULL);
    int ok = decoded && sscanf(decoded, "%127[^/]/%299[^/]/%15s", pool, peer, action) == 3;
    free(decoded);
    if (!ok || (strcmp(action, "drain") != 0 && strcmp(action, "enable") != 0)) {
        reply_text(req, 404, "Not Found", "POST /peers/{pool}/{peer}/drain or /enable");
        return;
    }
    int i = moxy_conf_upstream_index(admin.conf, pool, strlen(pool));
    moxy_peer_t *p = i >= 0 ? moxy_upstream_find_peer(admin.conf->upstreams[i].state, peer, strlen(peer)) : NULL;
    if (!p) {
        reply_text(req, 404, "Not Found", i < 0 ? "no such pool" : "no such peer in this pool");
        return;
    }
    moxy_peer_set_drained(p, action[0] == 'd');
    reply_text(req, 200, "OK", action[0] == 'd' ? "drained" : "enabled");
}

/* The status page: GET / and its files (admin_page.c), GET /history (admin_history.c),
 * and the one-second timer that samples the history. */
static void page(struct evhttp_request *req, const moxy_admin_asset_t *asset)
{
    struct evbuffer *b = evbuffer_new();
    int ok = b && (asset ? evbuffer_add_reference(b, asset->data, asset->len, NULL, NULL) == 0
                         : moxy_history_json(b) == MOXY_OK);
    if (!ok) {
        if (b) evbuffer_free(b);
        evhttp_send_error(req, 500, NULL);
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (asset) {
        evhttp_add_header(h, "Content-Security-Policy", moxy_admin_page_csp);
        evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
        evhttp_add_header(h, "Referrer-Policy", "no-referrer");
    }
    reply(req, 200, "OK", asset ? asset->type : "application/json", b);
    evbuffer_free(b);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    moxy_history_sample(admin.workers, admin.n, admin.conf);
}

static void handle(struct evhttp_request *req, void *arg)
{
    MOXY_UNUSED(arg);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!path) path = "/";
    if (strncmp(path, "/peers/", 7) == 0 || strcmp(path, "/reload") == 0 || strcmp(path, "/purge") == 0) {
        if (cmd != EVHTTP_REQ_POST) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
            reply_text(req, 405, "Method Not Allowed", "POST only");
            return;
        }
        if (path[1] == 'r') reload(req);
        else if (path[2] == 'u') purge(req);
        else peer_action(req, path);
        return;
    }
    const moxy_admin_asset_t *asset = moxy_admin_asset(path);
    int is_page = asset || strcmp(path, "/history") == 0;
    if (!is_page && strcmp(path, "/status") != 0 && strcmp(path, "/metrics") != 0) {
        reply_text(req, 404, "Not Found",
                   "GET /, GET /status, GET /metrics, GET /history, POST /reload, POST /purge, "
                   "POST /peers/{pool}/{peer}/drain|enable");
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "GET only");
        return;
    }
    if (is_page) page(req, asset);
    else if (path[1] == 's') status(req);
    else metrics(req);
}

int moxy_admin_start(const moxy_conf_t *conf, struct event_base *base, moxy_worker_t *const *workers, int n)
{
    if (!conf->admin.enabled) return MOXY_OK;
    admin.conf = conf;
    admin.workers = workers;
    admin.n = n;
    admin.started_us = moxy_mono_us();
    admin.http = evhttp_new(base);
    if (!admin.http) goto err;
    evhttp_set_allowed_methods(admin.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_max_headers_size(admin.http, 16384);
    evhttp_set_max_body_size(admin.http, 65536);
    evhttp_set_timeout(admin.http, 10);
    evhttp_set_gencb(admin.http, handle, NULL);
    moxy_history_sample(workers, n, conf);
    static const struct timeval second = {1, 0};
    admin.tick = event_new(base, -1, EV_PERSIST, tick, NULL);
    if (!admin.tick || event_add(admin.tick, &second) != 0) goto err;
    admin.accept_retry = evtimer_new(base, accept_retry, NULL);
    if (!admin.accept_retry) goto err;
    struct evhttp_bound_socket *bound = NULL;
    evutil_socket_t fd = socket(conf->admin.addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    /* SO_REUSEPORT: a binary upgrade's new process listens here before the old one is gone */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)&conf->admin.addr.sa, conf->admin.addr.salen) != 0 ||
        listen(fd, 128) != 0 || !(bound = evhttp_accept_socket_with_handle(admin.http, fd))) {
        moxy_log_err("admin: cannot listen on %s: %s", conf->admin.addr.text, strerror(errno));
        if (fd >= 0) close(fd);
        goto err;
    }
    admin.lev = evhttp_bound_socket_get_listener(bound);
    evconnlistener_set_error_cb(admin.lev, accept_error);
    moxy_log_info("admin listener on %s%s", conf->admin.addr.text,
                  conf->admin.token ? "" : " (no admin.token: reload, purge, drain and enable are refused)");
    return MOXY_OK;
err:
    moxy_admin_stop();
    return MOXY_ERROR;
}

void moxy_admin_set_conf(const moxy_conf_t *conf)
{
    admin.conf = conf;
}

void moxy_admin_stop(void)
{
    if (admin.tick) event_free(admin.tick);
    admin.tick = NULL;
    if (admin.accept_retry) event_free(admin.accept_retry);
    admin.accept_retry = NULL;
    admin.lev = NULL; /* freed with admin.http */
    admin.paused_ms = 0;
    admin.hits = 0;
    admin.trying = 0;
    if (admin.http) evhttp_free(admin.http);
    admin.http = NULL;
}

static int admin_reload(moxy_conf_t *conf, struct event_base *base)
{
    MOXY_UNUSED(base);
    moxy_admin_set_conf(conf);
    return MOXY_OK;
}

moxy_module_t moxy_admin_module = {
    .name = "admin",
    .reload = admin_reload,
};

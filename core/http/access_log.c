/*
 * access_log.c -- one line per request, in the combined format (with moxy's
 * fields appended) or as a JSON object, into the worker's buffer (log.c
 * writes it out when full and every second).
 */
#include "base/headers.h"
#include "http/http.h"
#include "base/json.h"
#include "base/log.h"
#include "http/worker.h"

#include <stdio.h>
#include <time.h>

#define LINE_MAX_BYTES 8192

/* Copy s into p (at most room bytes, less a spare byte), escaping what
 * would break the format: for the combined format '"' and '\\' are
 * backslashed and control bytes and bytes above 0x7e become \xHH; for JSON,
 * moxy_json_escape (invalid UTF-8 as \ufffd: the line stays valid JSON). */
static size_t put_escaped(char *p, size_t room, const char *s, size_t n, int json)
{
    static const char hex[] = "0123456789abcdef";
    if (room < 2) return 0;
    if (json) return moxy_json_escape(p, room - 1, s, n, NULL);
    size_t o = 0;
    for (size_t i = 0; i < n && o + 6 < room; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            p[o++] = '\\';
            p[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            p[o++] = '\\';
            p[o++] = 'x';
            p[o++] = hex[ch >> 4];
            p[o++] = hex[ch & 15];
        } else {
            p[o++] = (char)ch;
        }
    }
    return o;
}

/* The JSON format's key of each field (MOXY_ALF_*). */
static const char *const json_keys[MOXY_ALF_COUNT] = {
    [MOXY_ALF_TIME] = "time",
    [MOXY_ALF_REQUEST_ID] = "request_id",
    [MOXY_ALF_CLIENT] = "client",
    [MOXY_ALF_METHOD] = "method",
    [MOXY_ALF_URI] = "uri",
    [MOXY_ALF_PROTOCOL] = "protocol",
    [MOXY_ALF_STATUS] = "status",
    [MOXY_ALF_BYTES] = "bytes",
    [MOXY_ALF_UPSTREAM] = "upstream",
    [MOXY_ALF_DURATION_MS] = "duration_ms",
    [MOXY_ALF_REFERER] = "referer",
    [MOXY_ALF_USER_AGENT] = "user_agent",
    [MOXY_ALF_ERROR] = "error",
    [MOXY_ALF_HOST] = "host",
    [MOXY_ALF_SOCKET_CLIENT] = "socket_client",
    [MOXY_ALF_POOL] = "pool",
    [MOXY_ALF_TRIES] = "tries",
    [MOXY_ALF_UPSTREAM_STATUS] = "upstream_status",
    [MOXY_ALF_UPSTREAM_HEADER_MS] = "upstream_header_ms",
    [MOXY_ALF_LISTENER] = "listener",
};

/* The n bytes at s (NULL: none) as a JSON string at p, its escaped body
 * given `body` bytes of room (put_escaped's sense); returns its length. */
static size_t json_string(char *p, size_t body, const char *s, size_t n)
{
    size_t o = 0;
    p[o++] = '"';
    if (s) o += put_escaped(p + o, body, s, n, 1);
    p[o++] = '"';
    return o;
}

/* One "key":value of a JSON line (field f, MOXY_ALF_*) at p (room bytes,
 * at least 600); returns its length. */
static size_t json_field(const moxy_req_t *r, int f, char *p, size_t room, const char *ts, const struct timeval *now,
                         double secs, const char *method, const char *uri, size_t urilen, const char *upstream,
                         int status, const moxy_header_t *ref, const moxy_header_t *ua)
{
    if (f < 0 || f >= MOXY_ALF_COUNT) return 0;
    const moxy_conf_t *conf = r->g->conf;
    size_t k = (size_t)snprintf(p, room, "\"%s\":", json_keys[f]);
    p += k;
    room -= k;
    /* an escaped string's room: its quotes and a spare byte off; the header
     * values get 256 at most, the URI leaves about 512 to the fields after it */
    size_t body = room - 3, small = body > 256 ? 256 : body;
    const char *plain = NULL; /* a string value of its own */
    switch (f) {
    case MOXY_ALF_TIME: return k + (size_t)snprintf(p, room, "\"%s.%03dZ\"", ts, (int)(now->tv_usec / 1000));
    case MOXY_ALF_REQUEST_ID: plain = r->id; break;
    case MOXY_ALF_CLIENT: plain = moxy_req_client_ip(r); break;
    case MOXY_ALF_SOCKET_CLIENT: plain = r->addr->sock_ip; break;
    case MOXY_ALF_METHOD: return k + json_string(p, body, method, strlen(method));
    case MOXY_ALF_URI: return k + json_string(p, body > 512 ? body - 510 : body, uri, urilen);
    case MOXY_ALF_HOST: return k + json_string(p, small, r->host, r->host ? strlen(r->host) : 0);
    case MOXY_ALF_PROTOCOL:
        return k + (size_t)snprintf(p, room, "\"HTTP/%d.%d\"", r->http_major ? r->http_major : 1, r->http_minor);
    case MOXY_ALF_STATUS: return k + (size_t)snprintf(p, room, "%d", status);
    case MOXY_ALF_BYTES: return k + (size_t)snprintf(p, room, "%llu", (unsigned long long)r->bytes_sent);
    case MOXY_ALF_UPSTREAM: plain = upstream; break;
    case MOXY_ALF_DURATION_MS: return k + (size_t)snprintf(p, room, "%.3f", secs * 1000.0);
    case MOXY_ALF_REFERER: return k + json_string(p, small, ref ? ref->value : NULL, ref ? ref->value_len : 0);
    case MOXY_ALF_USER_AGENT: return k + json_string(p, small, ua ? ua->value : NULL, ua ? ua->value_len : 0);
    case MOXY_ALF_ERROR: plain = r->error; break; /* the caller skips the field without one */
    case MOXY_ALF_POOL: plain = r->pool >= 0 && r->pool < conf->nupstreams ? conf->upstreams[r->pool].name : ""; break;
    case MOXY_ALF_TRIES: return k + (size_t)snprintf(p, room, "%d", r->tries);
    case MOXY_ALF_UPSTREAM_STATUS: return k + (size_t)snprintf(p, room, "%d", r->up_status);
    case MOXY_ALF_UPSTREAM_HEADER_MS: {
        double ms = -1;
        if (r->up_header_us) ms = (double)(r->up_header_us - r->up_started_us) / 1000;
        return k + (ms < 0 ? (size_t)snprintf(p, room, "null") : (size_t)snprintf(p, room, "%.3f", ms));
    }
    case MOXY_ALF_LISTENER: plain = conf->listens[r->listen_index].name; break;
    }
    /* escaped too: a listener's or a pool's name is whatever the configuration says */
    return k + json_string(p, small, plain, plain ? strlen(plain) : 0);
}

void moxy_access_log(moxy_req_t *r)
{
    moxy_worker_t *w = r->w;
    if (!moxy_alog_enabled()) return;
    char *p = moxy_alog_reserve(&w->alog, LINE_MAX_BYTES);
    if (!p) return;
    size_t room = LINE_MAX_BYTES, o = 0;

    struct timeval now;
    event_base_gettimeofday_cached(w->base, &now);
    long long us = moxy_req_elapsed_us(r);
    /* whole seconds plus the fraction, not us / 1e6: the two doubles can
     * differ in the last bit, and rt's %.3f would round a tie differently */
    double secs = us < 0 ? 0 : (double)(us / 1000000) + (double)(us % 1000000) / 1e6;
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);

    const char *method = r->method_name ? r->method_name : "-";
    const char *uri = r->uri ? r->uri : "-";
    size_t urilen = r->uri ? r->uri_len : 1;
    const moxy_header_t *ref = moxy_headers_get(&r->headers, "Referer", 7),
                        *ua = moxy_headers_get(&r->headers, "User-Agent", 10);
    const char *upstream = r->peer ? r->peer : "-";
    int status = r->status ? r->status : 0;

    const moxy_conf_t *conf = r->g->conf;
    if (conf->log.format == MOXY_ALOG_JSON) {
        char ts[40];
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
        p[o++] = '{';
        size_t start = o;
        for (int i = 0; i < conf->log.nfields && o + 600 < room; i++) {
            int f = conf->log.fields[i];
            if (f == MOXY_ALF_ERROR && !r->error) continue;
            if (o > start) p[o++] = ',';
            o += json_field(r, f, p + o, room - o - 64, ts, &now, secs, method, uri, urilen, upstream, status,
                            ref, ua);
        }
        for (const moxy_log_field_t *f = r->log_fields; f && o + 100 < room; f = f->next) {
            if (o > start) p[o++] = ',';
            o += (size_t)snprintf(p + o, room - o, "\"%.*s\":%s", (int)f->name_len, f->name, f->quoted ? "\"" : "");
            o += put_escaped(p + o, room - o - 16, f->value, f->value_len, 1);
            if (f->quoted) p[o++] = '"';
        }
        o += (size_t)snprintf(p + o, room - o, "}\n");
    } else {
        char ts[40];
        strftime(ts, sizeof(ts), "%d/%b/%Y:%H:%M:%S +0000", &tm);
        o += (size_t)snprintf(p + o, room - o, "%s - - [%s] \"%s ", moxy_req_client_ip(r), ts,
                              method);
        o += put_escaped(p + o, room - o - 512, uri, urilen, 0);
        o += (size_t)snprintf(p + o, room - o, " HTTP/%d.%d\" %d %llu \"",
                              r->http_major ? r->http_major : 1, r->http_minor, status,
                              (unsigned long long)r->bytes_sent);
        if (ref) o += put_escaped(p + o, room - o - 256, ref->value, ref->value_len, 0);
        else p[o++] = '-';
        o += (size_t)snprintf(p + o, room - o, "\" \"");
        if (ua) o += put_escaped(p + o, room - o - 128, ua->value, ua->value_len, 0);
        else p[o++] = '-';
        o += (size_t)snprintf(p + o, room - o, "\" rid=%s up=%s rt=%.3f", r->id, upstream, secs);
        for (const moxy_log_field_t *f = r->log_fields; f && o + 100 < room; f = f->next) {
            /* name=value; a string with a space or a quote goes in quotes */
            int q = f->quoted && (f->value_len == 0 || memchr(f->value, ' ', f->value_len) || memchr(f->value, '"', f->value_len));
            o += (size_t)snprintf(p + o, room - o, " %.*s=%s", (int)f->name_len, f->name, q ? "\"" : "");
            o += put_escaped(p + o, room - o - 16, f->value, f->value_len, 0);
            if (q) p[o++] = '"';
        }
        if (o < room) p[o++] = '\n';
    }
    if (o >= room) {
        o = room - 1;
        p[o - 1] = '\n';
    }
    w->alog.len += o;
}

/*
 * access_log.c -- one line per request, in the combined format (with moxy's
 * fields appended) or as a JSON object, into the worker's buffer (log.c
 * writes it out when full and every second).
 */
#include "headers.h"
#include "http.h"
#include "log.h"
#include "worker.h"

#include <stdio.h>
#include <time.h>

#define LINE_MAX_BYTES 8192

/* Copy s into p (at most room bytes), escaping what would break the format:
 * '"' and '\' and control bytes become \xHH (combined) or JSON escapes. */
static size_t put_escaped(char *p, size_t room, const char *s, size_t n, int json)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 6 < room; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            p[o++] = '\\';
            p[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f || (!json && ch >= 0x80)) {
            if (json) {
                memcpy(p + o, "\\u00", 4);
                o += 4;
            } else {
                p[o++] = '\\';
                p[o++] = 'x';
            }
            p[o++] = hex[ch >> 4];
            p[o++] = hex[ch & 15];
        } else {
            p[o++] = (char)ch;
        }
    }
    return o;
}

static const moxy_header_t *find(const moxy_req_t *r, const char *name, size_t n)
{
    int i = moxy_headers_find(&r->headers, name, n, 0);
    return i < 0 ? NULL : &r->headers.h[i];
}

void moxy_access_log(moxy_req_t *r)
{
    moxy_client_t *c = r->c;
    moxy_worker_t *w = c->w;
    if (!moxy_alog_enabled()) return;
    char *p = moxy_alog_reserve(&w->alog, LINE_MAX_BYTES);
    if (!p) return;
    size_t room = LINE_MAX_BYTES, o = 0;

    struct timeval now, dur;
    event_base_gettimeofday_cached(w->base, &now);
    evutil_timersub(&now, &r->started, &dur);
    double secs = (double)dur.tv_sec + (double)dur.tv_usec / 1e6;
    if (secs < 0) secs = 0;
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);

    const char *method = r->method_name ? r->method_name : "-";
    const char *uri = r->uri ? r->uri : "-";
    size_t urilen = r->uri ? r->uri_len : 1;
    const moxy_header_t *ref = find(r, "Referer", 7), *ua = find(r, "User-Agent", 10);
    const char *upstream = r->peer ? r->peer : "-";
    int status = r->status ? r->status : 0;

    if (w->conf->log.format == MOXY_ALOG_JSON) {
        char ts[40];
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
        o += (size_t)snprintf(p + o, room - o,
                              "{\"time\":\"%s.%03dZ\",\"request_id\":\"%s\",\"client\":\"%s\","
                              "\"method\":\"%s\",\"uri\":\"",
                              ts, (int)(now.tv_usec / 1000), r->id, moxy_req_client_ip(r), method);
        o += put_escaped(p + o, room - o - 512, uri, urilen, 1);
        o += (size_t)snprintf(p + o, room - o,
                              "\",\"protocol\":\"HTTP/%d.%d\",\"status\":%d,\"bytes\":%llu,"
                              "\"upstream\":\"%s\",\"duration_ms\":%.3f,\"referer\":\"",
                              r->http_major ? r->http_major : 1, r->http_minor, status,
                              (unsigned long long)r->bytes_sent, upstream, secs * 1000.0);
        if (ref) o += put_escaped(p + o, room - o - 256, ref->value, ref->value_len, 1);
        o += (size_t)snprintf(p + o, room - o, "\",\"user_agent\":\"");
        if (ua) o += put_escaped(p + o, room - o - 128, ua->value, ua->value_len, 1);
        o += (size_t)snprintf(p + o, room - o, "\"");
        if (r->error) o += (size_t)snprintf(p + o, room - o, ",\"error\":\"%s\"", r->error);
        for (const moxy_log_field_t *f = r->log_fields; f && o + 100 < room; f = f->next) {
            o += (size_t)snprintf(p + o, room - o, ",\"%.*s\":%s", (int)f->name_len, f->name, f->quoted ? "\"" : "");
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

/*
 * http_response.c -- the answers moxy gives itself: responses a hook gives,
 * error pages, on_error; the reason phrases and the Date of the second.
 * Their bytes go out through the request's stream (request.h).
 */
#include "base/headers.h"
#include "http/http.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "http/mask.h"
#include "http/request.h"
#include "http/worker.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <time.h>

const char *moxy_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
                  : status < 500 ? "Client Error" : "Server Error";
    }
}

static _Thread_local time_t date_sec = -1;
static _Thread_local char date_buf[40];
static _Thread_local size_t date_len;

const char *moxy_http_date(moxy_worker_t *w, size_t *len)
{
    struct timeval now;
    event_base_gettimeofday_cached(w->base, &now);
    if (now.tv_sec != date_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        date_len = strftime(date_buf, sizeof(date_buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        date_sec = now.tv_sec;
    }
    *len = date_len;
    return date_buf;
}

void moxy_resp_local_prepare(moxy_req_t *r, int status, size_t len)
{
    size_t dl;
    const char *date = moxy_http_date(r->w, &dl);
    r->local = 1;
    r->status = status;
    r->resp_body_kind = MOXY_BODY_LENGTH;
    r->resp_body_left = len;
    if (moxy_headers_find(&r->resp_headers, "Date", 4, 0) < 0)
        moxy_headers_add(&r->mem, &r->resp_headers, "Date", 4, date, dl);
    if (moxy_headers_find(&r->resp_headers, "Content-Type", 12, 0) < 0 && len > 0)
        moxy_headers_add(&r->mem, &r->resp_headers, "Content-Type", 12, "text/plain", 10);
    moxy_mask_server(r);
}

void moxy_resp_local(moxy_req_t *r, int status, const char *body, size_t len)
{
    moxy_resp_local_prepare(r, status, len);
    moxy_stream_send_head(r);
    if (moxy_resp_has_body(r) && len > 0) {
        moxy_stream_send_data(r, body, len);
        r->bytes_sent = len;
    }
    moxy_req_response_done(r);
}

static int wants_json(const moxy_req_t *r)
{
    for (uint32_t i = 0; i < r->headers.n; i++) {
        const moxy_header_t *h = &r->headers.h[i];
        if (MOXY_STRIEQ_LIT(h->name, h->name_len, "accept") && memmem(h->value, h->value_len, "json", 4))
            return 1;
    }
    return 0;
}

static void log_error(moxy_req_t *r, int status, const char *why)
{
    if (!r->id[0]) moxy_req_make_id(r);
    if (!r->method_name) r->method_name = "-";
    r->error = why;
    moxy_log(status >= 500 ? MOXY_LOG_WARN : MOXY_LOG_INFO, r->id, "%s %s from %s: %d: %s",
             r->method_name, r->uri ? r->uri : "-", r->addr->ip, status, why);
}

size_t moxy_resp_error_body(moxy_req_t *r, int status, char *buf, size_t size)
{
    int n;
    r->resp_headers.n = 0;
    const char *reason = moxy_status_reason(status);
    if (wants_json(r)) {
        n = snprintf(buf, size, "{\"status\":%d,\"error\":\"%s\",\"request_id\":\"%s\"}\n",
                     status, reason, r->id);
        moxy_headers_add(&r->mem, &r->resp_headers, "Content-Type", 12, "application/json", 16);
    } else {
        /* signed with the name moxy's Server field gives (mask.server: no
         * characters HTML would read), or not at all: nothing of the origin */
        const char *server = moxy_mask_of(r)->server;
        n = snprintf(buf, size,
                     "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>\n"
                     "<body><h1>%d %s</h1><p>request id %s</p>%s%s</body></html>\n",
                     status, reason, status, reason, r->id, server ? "<hr>" : "", server ? server : "");
        moxy_headers_add(&r->mem, &r->resp_headers, "Content-Type", 12, "text/html; charset=utf-8", 24);
    }
    moxy_headers_add(&r->mem, &r->resp_headers, "Cache-Control", 13, "no-store", 8);
    if (n < 0) return 0;
    return (size_t)n < size ? (size_t)n : size - 1; /* snprintf cut it there */
}

/* moxy's own error page for status. */
static void error_page(moxy_req_t *r, int status)
{
    char body[MOXY_ERROR_PAGE_MAX];
    size_t n = moxy_resp_error_body(r, status, body, sizeof(body));
    moxy_resp_local(r, status, body, n);
}

void moxy_resp_error(moxy_req_t *r, int status, const char *why)
{
    log_error(r, status, why);
    error_page(r, status);
}

void moxy_req_fail(moxy_req_t *r, int status, const char *why)
{
    log_error(r, status, why);
    if (!r->body_done) r->keepalive = 0;
    if (!moxy_lua_has(r->g, MOXY_PHASE_ERROR) || r->hook_phase == MOXY_PHASE_ERROR) {
        error_page(r, status); /* no hooks, or they failed themselves */
        return;
    }
    r->status = status;
    r->resp_headers.n = 0;
    r->local = 0;
    int rc = moxy_lua_run(r, MOXY_PHASE_ERROR, moxy_req_error_hooks_done);
    if (rc == MOXY_AGAIN) return; /* moxy_req_error_hooks_done follows */
    moxy_req_error_hooks_done(r, rc);
}

void moxy_req_error_hooks_done(moxy_req_t *r, int rc)
{
    if (rc == MOXY_DONE) moxy_resp_local(r, r->status, r->local_body, r->local_body_len);
    else error_page(r, r->status >= 500 ? r->status : 500);
}

/*
 * http_fetch.h -- moxy.http: a non-blocking HTTP/1.1 client for hooks and
 * timer callbacks.  lua/moxy/http.lua builds the request bytes and calls
 * moxy_ffi_http_start (core/api/ffi.h); the calling hook waits (yields) while
 * the call runs on its worker's event loop, and is woken with the result.
 *
 * Per worker (w->fetch, created on the first call): keep-alive connections
 * idle per "host:port" (at most FETCH_IDLE_PER_PEER each, closed after
 * FETCH_IDLE_SECS or when the origin closes them), the calls in flight, and
 * an evdns resolver for host names.
 *
 * Ownership: a call (op) belongs to the task that waits for it.  It is freed
 * when it completes (just before its task is woken) or when the bridge
 * cancels it (its task was dropped) -- never by the registry.  The registry
 * owns only idle connections, name lookups and the resolver; when it is
 * freed, calls still in flight lose their sockets and events but stay
 * allocated until their cancel comes, so either order is safe.
 */
#ifndef MOXY_HTTP_FETCH_H
#define MOXY_HTTP_FETCH_H

#include "http/http-t.h"

/* w's thread ends: close its idle moxy.http connections, stop the calls
 * still in flight (sockets closed, events removed; each is freed by its
 * task's cancel), free the resolver and w->fetch.  No-op when moxy.http was
 * never used.  Call after w's clients are closed, before its VM is. */
void moxy_fetch_free_worker(moxy_worker_t *w);

#endif

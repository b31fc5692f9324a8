/*
 * http_fetch.h -- moxy.http: a non-blocking HTTP/1.1 client for hooks and
 * timer callbacks.  lua/moxy/http.lua builds the request bytes and calls
 * moxy_ffi_http_start (below); the calling hook waits (yields) while
 * the call runs on its worker's event loop, and is woken with the result.
 *
 * Per worker (its slot of moxy_fetch_module, created on the first call): the
 * calls in flight.  Keep-alive connections wait idle in the worker's dialer
 * (net/dial.h) under "host:port" (at most FETCH_IDLE_PER_PEER each), which
 * also resolves host names.
 *
 * Ownership: a call (op) belongs to the task that waits for it.  It is freed
 * when it completes (just before its task is woken) or when the bridge
 * cancels it (its task was dropped) -- never by the registry.  When the
 * registry is freed, calls still in flight lose their sockets and events but stay
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

/* The FFI exports of lua/moxy/http.lua (tools/check-ffi.lua compares them with
 * its ffi.cdef; bump api/ffi.h's MOXY_FFI_ABI on any change). */
/* BEGIN FFI lua/moxy/http.lua */
/* Start an HTTP/1.1 call for the running hook or timer callback, which then
 * waits (runtime.wait) for its result: a table { status, headers, body }, or
 * nil and an error.  host (hlen bytes: an IP literal without brackets, or a
 * name) and port say where to connect; req (rlen bytes, copied) is the whole
 * request, head and body; head: a HEAD request (no body comes back);
 * keepalive: the connection may be kept and reused; timeout: seconds for
 * the whole call; connect_timeout: seconds per connect (<= 0: the
 * configuration's timeouts.connect); max_body: bytes the response body may
 * have.  MOXY_OK: started; MOXY_DECLINED: no hook or timer callback runs;
 * MOXY_ERROR: failed at once, the reason in err (errlen bytes, NUL-ended). */
int moxy_ffi_http_start(const char *host, size_t hlen, int port, const char *req, size_t rlen,
                        int head, int keepalive, double timeout, double connect_timeout,
                        size_t max_body, int tls, char *err, size_t errlen);
/* END FFI */

/* moxy.http's part in a worker's life (lifecycle.h): its state in a worker slot, freed with the worker. */
extern struct moxy_module_s moxy_fetch_module;

#endif

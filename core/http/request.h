/*
 * request.h -- a request's life, whatever protocol brought it: its memory,
 * and what runs when it ends.
 *
 * A request owns its memory (r->mem, nginx's r->pool): r itself and
 * everything it points to come from it and go at once when its last
 * reference is let go (moxy_req_release).
 * Its id (moxy_req_make_id, moxy_req_set_id) and the end of its response
 * (moxy_req_response_done, which hands over to its protocol) are here too;
 * their prototypes are in http.h.
 *
 * What a module attaches to a request that must be released at its end (an
 * origin connection, cache object references, a Lua coroutine, a buffer)
 * comes with a cleanup the module adds when it attaches; moxy_req_end runs
 * them, newest first, and knows no module by name.
 */
#ifndef MOXY_REQUEST_H
#define MOXY_REQUEST_H

#include "http/http-t.h"

struct evbuffer;

/* A new request on worker w and its generation g (which it holds to its
 * end), come in on g's listener listen_index, started now.  NULL: out of
 * memory. */
moxy_req_t *moxy_req_new(moxy_worker_t *w, moxy_wgen_t *g, int listen_index);

/* r came on conn: when conn is TLS past its handshake, r is https and
 * keeps its own copy of what was negotiated (r->tls, in r's memory: it may
 * outlive conn). */
void moxy_req_keep_tls(moxy_req_t *r, const moxy_conn_t *conn);

/* Something to do when r ends (moxy_req_defer). */
typedef struct moxy_req_defer_s {
    struct moxy_req_defer_s *next;
    void (*fn)(void *arg); /* NULL: cancelled */
    void *arg;
} moxy_req_defer_t;

/* Call fn(arg) when r ends, after its cleanups, newest first.  The record
 * (in r's memory) is the caller's to cancel (d->fn = NULL) until then.
 * NULL: out of memory. */
moxy_req_defer_t *moxy_req_defer(moxy_req_t *r, void (*fn)(void *arg), void *arg);

/* Run fn(r) when r ends.  Adding a function already added does nothing,
 * so that a module adds its cleanup each time it attaches something (a
 * few pointer compares).  Each module has one: more than MOXY_REQ_CLEANUPS
 * different ones is a bug, and aborts. */
void moxy_req_cleanup_add(moxy_req_t *r, moxy_req_cleanup_fn fn);

/* r->body_buf, the buffer of r's whole body (txn:read_body, moxy.test):
 * made when r has none (a spare of the worker's), given back when r ends.
 * NULL when out of memory. */
struct evbuffer *moxy_req_body_buffer(moxy_req_t *r);

/* r is over: its cleanups run (newest first), then it lets go of its
 * generation.  Its memory stays until its last reference goes. */
void moxy_req_end(moxy_req_t *r);

/* r's stream (its protocol's ops and connection), taken before a call that
 * may end r: what follows such a call uses this, not r. */
typedef struct {
    const moxy_stream_ops_t *ops;
    void *ctx; /* NULL: no connection (it outlived it, or never had one) */
} moxy_stream_ref_t;

static inline moxy_stream_ref_t moxy_req_stream(const moxy_req_t *r)
{
    moxy_stream_ref_t s = {r->stream, r->stream_ctx};
    return s;
}

/* Hooks that held r back are done: its protocol reads its body on, if r
 * is still its current request (r is compared, not read: it may be gone). */
static inline void moxy_stream_read_on(moxy_stream_ref_t s, const moxy_req_t *r)
{
    if (s.ctx) s.ops->read_on(s.ctx, r);
}

static inline void moxy_stream_hold(moxy_stream_ref_t s)
{
    if (s.ctx) s.ops->hold(s.ctx);
}

static inline void moxy_stream_release(moxy_stream_ref_t s)
{
    if (s.ctx) s.ops->release(s.ctx);
}

/* The calls of r's stream (http-t.h's moxy_stream_ops_t), for a request
 * that has its connection (not one whose on_log hooks outlived it). */
static inline int moxy_stream_send_head(moxy_req_t *r)
{
    return r->stream->send_head(r->stream_ctx, r);
}

static inline void moxy_stream_send_interim(moxy_req_t *r, int status, const moxy_headers_t *h)
{
    r->stream->send_interim(r->stream_ctx, r, status, h);
}

static inline void moxy_stream_send_body(moxy_req_t *r, struct evbuffer *from, size_t n)
{
    r->stream->send_body(r->stream_ctx, r, from, n);
}

static inline void moxy_stream_send_data(moxy_req_t *r, const void *data, size_t n)
{
    r->stream->send_data(r->stream_ctx, r, data, n);
}

static inline int moxy_stream_send_ref(moxy_req_t *r, const void *data, size_t n, moxy_ref_release_fn release,
                                       void *arg)
{
    return r->stream->send_ref(r->stream_ctx, r, data, n, release, arg);
}

static inline int moxy_stream_send_file(moxy_req_t *r, struct evbuffer_file_segment *seg, uint64_t off,
                                        uint64_t n)
{
    return r->stream->send_file(r->stream_ctx, r, seg, off, n);
}

static inline int moxy_stream_flush(moxy_req_t *r)
{
    return r->stream->flush(r->stream_ctx);
}

static inline int moxy_stream_backlogged(const moxy_req_t *r)
{
    return r->stream->backlogged(r->stream_ctx);
}

static inline void moxy_stream_resume_read(const moxy_req_t *r)
{
    if (r->stream_ctx) r->stream->resume_read(r->stream_ctx);
}

static inline int moxy_stream_sendfile(const moxy_req_t *r)
{
    return r->stream_ctx ? r->stream->sendfile(r->stream_ctx) : 0;
}

static inline void moxy_stream_abort(moxy_req_t *r)
{
    r->stream->abort(r->stream_ctx);
}

static inline int moxy_stream_tunnel(moxy_req_t *r)
{
    r->tunnel = 1;
    return r->stream->tunnel(r->stream_ctx, r);
}

static inline int moxy_stream_tunnel_relay(moxy_req_t *r, struct evbuffer *from, int eof)
{
    return r->stream->tunnel_relay(r->stream_ctx, from, eof);
}

/* 1 when r's client is gone (its connection closed under it).  A
 * request of moxy.test has no stream at all, and never loses it. */
static inline int moxy_req_client_gone(const moxy_req_t *r)
{
    return r->stream && !r->stream_ctx;
}

/* The client is done with r's origin connection, or gone: it closes. */
static inline void moxy_req_origin_cut(moxy_req_t *r)
{
    if (r->up) r->origin->cut(r);
}

/* What answers a request its on_request hooks let through: the content
 * handler, set once at start-up (ops/main.c: the cache's, which goes to the
 * proxy when it has no answer). */
typedef void (*moxy_req_handler_fn)(moxy_req_t *r);
void moxy_req_set_content_handler(moxy_req_handler_fn h);

/* Answer r with the content handler. */
void moxy_req_content(moxy_req_t *r);

/* What looks at each request before its forwarding fields are added and
 * its on_request hooks run, set once at start-up (ops/modules.c: the
 * cache's sharding, cache_shard.c).  It returns 0: on as usual; 1: r goes
 * straight to the content handler (no forwarding fields, no on_request);
 * -1: it answered r. */
typedef int (*moxy_req_check_fn)(moxy_req_t *r);
void moxy_req_set_early_check(moxy_req_check_fn fn);

/* Run the early check on r (0 without one); the protocols call it before
 * moxy_req_add_forwarding, and on 1 call moxy_req_after_request_hooks(r,
 * MOXY_OK), on -1 nothing more. */
int moxy_req_early_check(moxy_req_t *r);

/* Add (or replace) the access-log field name=value of r (txn:log_field's
 * list; name: letters, digits, _, at most 64 bytes, checked by the
 * caller); quoted: a string.  Copied into r's memory.  MOXY_OK, or
 * MOXY_ERROR (out of memory). */
int moxy_req_log_field(moxy_req_t *r, const char *name, size_t nlen, const char *val, size_t vlen, int quoted);

/* r's on_request hooks are done (rc as moxy_lua_run returns): a hook's
 * answer goes out, a script error is a 500, else the content handler
 * answers.  Every protocol's next step after on_request. */
void moxy_req_after_request_hooks(moxy_req_t *r, int rc);

/* The whole response of r is queued (its body's end too): its stream
 * goes on (the next request, the close).  r may be gone after. */
void moxy_req_response_done(moxy_req_t *r);

/* r's response is over, or was cut (moxy_req_abort), and its stream
 * let go of it (r->stream_ctx NULL or its own): its on_log hooks run, then
 * its access-log line and statistics, and it ends and is freed.  When the
 * hooks wait, r lives on by itself (moxy_req_detach) until they are done.
 * r is not the caller's after. */
void moxy_req_finish(moxy_req_t *r);

/* r lives without a connection (a request moxy makes itself, or one whose
 * on_log hooks outlived its connection): it keeps its own copy of the
 * client's addresses, is listed on its worker's w->detached and counts as
 * a connection there (a draining worker waits for it) until it is freed.
 * MOXY_ERROR: out of memory (nothing changed). */
int moxy_req_detach(moxy_req_t *r);

/* r's response will not be finished (its client left, the response was
 * cut, its worker stops) and its stream let go of it: it is logged as 499
 * when no head went out, with why (unless an error was already given), its
 * origin connection closes, and it ends (moxy_req_finish).  r is not the
 * caller's after. */
void moxy_req_abort(moxy_req_t *r, const char *why);

/* End the requests of w without a connection that run on generation g
 * (its drain deadline passed), or all of them when g is NULL (the worker
 * stops): one still waiting for its origin is aborted, one whose on_log
 * hooks wait is logged without them. */
void moxy_req_end_detached(moxy_worker_t *w, const moxy_wgen_t *g);

/* Take / let go of a reference to r: its memory (r included) goes when the
 * last is let go.  moxy_req_new's caller holds the first and lets go of it
 * after moxy_req_end; whoever must read r across a call that may end it
 * (an event of its origin connection) holds one, and after the call finds
 * r->over set if r ended meanwhile: then nothing of r but its memory is
 * left (no generation, no stream, no cleanups to run). */
static inline void moxy_req_hold(moxy_req_t *r)
{
    r->refs++;
}

void moxy_req_release(moxy_req_t *r);

#endif

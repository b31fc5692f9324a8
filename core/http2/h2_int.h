/*
 * h2_int.h -- what the files of http2/ share: an HTTP/2 connection
 * (h2_conn.c: the socket, the nghttp2 session, limits, GOAWAY) and its
 * streams (h2_stream.c: each one's request, its body both ways).
 *
 * Ownership: a connection is malloc'ed when HTTP/1 hands it over and freed
 * once closed and no event callback holds it (busy).  A stream is
 * malloc'ed with its HEADERS and freed when nghttp2 closes it (or with its
 * connection), unless a caller holds it: then when the last hold goes.
 * A stream's request is its own from the first HEADERS until the response
 * is queued (then it is logged: moxy_req_finish) or the stream is reset
 * (aborted: moxy_req_abort); r->stream_ctx is the stream while it lasts.
 */
#ifndef MOXY_H2_INT_H
#define MOXY_H2_INT_H

#include "http/http-t.h"
#include "http2/http2.h"

#include <nghttp2/nghttp2.h>

typedef struct h2_conn_s h2_conn_t;
typedef struct h2_stream_s h2_stream_t;

struct h2_stream_s {
    h2_conn_t *h;
    int32_t id;
    moxy_req_t *r;            /* its request, NULL once logged or aborted */
    struct evbuffer *out;     /* response body not yet framed (NULL until the first piece) */
    struct evbuffer *body;    /* request body read, not yet passed on (NULL until the first piece) */
    nghttp2_nv *trailers;     /* the response's trailers (one malloc with their bytes), or NULL */
    size_t ntrailers;
    size_t unacked;           /* request body bytes passed on whose window is not yet given back */
    uint32_t field_bytes;     /* the request head's decoded size (RFC 9113 6.5.2's, 32 per field) */
    uint32_t nfields;
    int bad_status;           /* the head is refused with this status once complete (0: fine) */
    const char *bad_why;
    long long stall_ms;       /* when its response waited on a closed window (0: it does not) */
    long long body_ms;        /* when a request body byte last came */
    int busy;                 /* holds (stream ops' hold, callers on the stack) */
    unsigned head_sent : 1;   /* the response HEADERS is submitted */
    unsigned has_data : 1;    /* ... with a data provider */
    unsigned out_eof : 1;     /* the whole response body is in out */
    unsigned deferred : 1;    /* the data provider waits for out (nghttp2_session_resume_data) */
    unsigned in_eof : 1;      /* the client's END_STREAM came */
    unsigned body_ended : 1;  /* the request body's end went toward the origin (chunked: last chunk) */
    unsigned started : 1;     /* its request runs (head accepted) */
    unsigned pumping : 1;     /* stream_pump hands the body to the origin (not re-entered) */
    unsigned closed : 1;      /* nghttp2 closed it; freed when busy drops to 0 */
    unsigned has_authority : 1;
    unsigned cookies : 1;     /* several cookie fields came (joined at the end of the head) */
    LIST_ENTRY(h2_stream_s) link; /* its connection's streams */
};

struct h2_conn_s {
    moxy_session_t s;         /* first: what its worker sees */
    moxy_worker_t *w;
    moxy_conn_t conn;
    nghttp2_session *ng;
    struct event rev, wev;    /* the socket */
    struct event flush_ev;    /* a send queued by a stream, run once the current event is done */
    struct event tick;        /* once a second while streams run: stalls, body timeouts, drain grace */
    struct evbuffer *out;     /* frames toward the client (NULL while idle) */
    moxy_client_addr_t addr;
    moxy_conn_slot_t climit;  /* its place under limits.connections_per_client (from HTTP/1) */
    void *frame_buf;          /* nghttp2's output frame buffer (page-aligned, see h2_conn.c), or NULL */
    size_t frame_len;
    void *map_buf;            /* nghttp2's table of streams (page-aligned), or NULL */
    size_t map_len;
    unsigned mem_making : 1;  /* the session is being made: those two are allocated now */
    unsigned mem_idle : 1;    /* their pages went back to the kernel (idle) */
    long long idle_ms;        /* when it last became idle (no stream, nothing queued); 0: it is not,
                                 or its pages went back already */
    LIST_HEAD(, h2_stream_s) streams;
    int nstreams;             /* streams that have a request */
    int busy;
    double tokens;            /* the control-frame budget (h2_conn.c's flood check) */
    long long tokens_ms;      /* when it was last refilled */
    double resets;            /* the stream-reset budget (h2_conn.c) */
    long long resets_ms;
    long long drain_ms;       /* draining: when the final GOAWAY goes (0: not yet draining) */
    unsigned trusted : 1;
    unsigned local_peer : 1;
    unsigned https : 1;
    unsigned reading : 1;
    unsigned writing : 1;
    unsigned ticking : 1;
    unsigned flush_queued : 1;
    unsigned in_io : 1;       /* recv or send runs: sends wait for its end */
    unsigned goaway : 1;      /* the final GOAWAY is submitted: no new stream */
    unsigned dead : 1;        /* closed; freed when busy drops to 0 */
};

/* --- the connection (h2_conn.c) --- */

/* Send what nghttp2 and the streams have queued, once the event being run
 * is done (several streams' frames go in one write). */
void h2_conn_flush_later(h2_conn_t *h);

/* Close h now: its streams' requests are aborted. */
void h2_conn_close(h2_conn_t *h, const char *why);

/* Take a unit of h's control-frame budget (a frame that asks work of moxy
 * and carries no request); 0 when it is spent: the connection is told
 * ENHANCE_YOUR_CALM and closes. */
int h2_conn_budget(h2_conn_t *h, double cost);

/* Keep h's memory across a call that may close it; release frees it if it
 * closed meanwhile. */
void h2_conn_hold(h2_conn_t *h);
void h2_conn_release(h2_conn_t *h);

/* --- streams (h2_stream.c) --- */

/* nghttp2's callbacks for requests: a HEADERS begins, a field, the head
 * or trailers complete, a DATA piece, END_STREAM, the stream closed. */
int h2_stream_begin(h2_conn_t *h, const nghttp2_frame *f);
int h2_stream_field(h2_conn_t *h, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value,
                    size_t vlen);
int h2_stream_frame(h2_conn_t *h, const nghttp2_frame *f);
int h2_stream_data(h2_conn_t *h, int32_t id, const uint8_t *data, size_t len);
void h2_stream_closed(h2_conn_t *h, int32_t id, uint32_t error_code);

/* A frame went out on stream id (its response's END_STREAM: stop a
 * request body still coming). */
void h2_stream_sent(h2_conn_t *h, const nghttp2_frame *f);

/* nghttp2's data provider's callbacks for a response body: how much to
 * frame next, and the frame itself moved into h->out. */
ssize_t h2_stream_data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *arg);
int h2_stream_data_send(h2_conn_t *h, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src);

/* Once a second while h has streams: a response stalled on a closed
 * window past timeouts.client_send, a request body silent past
 * timeouts.client_body. */
void h2_stream_tick(h2_conn_t *h, long long now_ms);

/* Let go of s's request (aborted with why, unless it was logged) and of s. */
void h2_stream_drop(h2_stream_t *s, const char *why);

/* Free s (closed, not held). */
void h2_stream_free(h2_stream_t *s);

/* Abort the requests of h that run on generation g (its drain deadline). */
void h2_streams_cut_gen(h2_conn_t *h, const moxy_wgen_t *g);

#endif

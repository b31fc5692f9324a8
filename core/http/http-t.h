/*
 * http-t.h -- the types of the HTTP/1.x proxy: client connections,
 * requests and origin connections (header lists: base/headers.h).  Prototypes are in http.h.
 *
 * Lifetimes: a client connection (moxy_client_t) is malloc'ed at accept and
 * freed at close.  Its request (moxy_req_t) and everything the request points
 * to come from the request's own memory (request.h), freed after the request
 * is logged.  An origin connection (moxy_upconn_t) is malloc'ed at connect
 * and freed at close; between requests it waits in its worker's idle list
 * for its pool.
 */
#ifndef MOXY_HTTP_T_H
#define MOXY_HTTP_T_H

#include "base/headers.h"
#include "base/moxy.h"
#include "base/pool.h"
#include "net/conn.h"
#include "net/conn_limit.h"
#include "net/event_mem.h"
#include "net/idle_pool.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <llhttp.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>

typedef struct moxy_worker_s moxy_worker_t;
typedef struct moxy_listener_s moxy_listener_t;
typedef struct moxy_client_s moxy_client_t;
typedef struct moxy_session_s moxy_session_t;
typedef struct moxy_req_s moxy_req_t;
typedef struct moxy_upconn_s moxy_upconn_t;
typedef struct moxy_pool_rt_s moxy_pool_rt_t;
typedef struct moxy_wgen_s moxy_wgen_t;
typedef struct moxy_body_tap_s moxy_body_tap_t;

/* Bytes queued toward a peer above which we stop reading from the other side,
 * and below which we start again (le-proxy's watermarks). */
/* Draining (QUIT, an upgrade, a listener removed by a reload): how long an
 * idle keep-alive connection waits for a request already on its way before
 * it closes. */
#define MOXY_DRAIN_IDLE_GRACE_MS 1000

/* Interim (1xx) responses an origin may send before its final one. */
#define MOXY_MAX_INTERIM 8

#define MOXY_HIGH_WATER (256 * 1024)
#define MOXY_LOW_WATER (64 * 1024)
/* The same while buffers are over limits.buffer_memory. */
#define MOXY_TIGHT_HIGH_WATER (16 * 1024)
#define MOXY_TIGHT_LOW_WATER (8 * 1024)

/* The watermarks now (tight while buffers are over their budget). */
static inline size_t moxy_high_water(void)
{
    return moxy_event_mem_over() ? MOXY_TIGHT_HIGH_WATER : MOXY_HIGH_WATER;
}

static inline size_t moxy_low_water(void)
{
    return moxy_event_mem_over() ? MOXY_TIGHT_LOW_WATER : MOXY_LOW_WATER;
}
#define MOXY_READ_CHUNK 16384

/* Lingering close: a connection closes once it has read and dropped this
 * many bytes (or timeouts.linger passed, or a second went by without any). */
#define MOXY_LINGER_MAX_BYTES (16 * 1024 * 1024)
#define MOXY_LINGER_IDLE_MS 1000

/* How a message body is delimited. */
typedef enum {
    MOXY_BODY_NONE = 0, /* no body */
    MOXY_BODY_LENGTH,   /* Content-Length bytes */
    MOXY_BODY_CHUNKED,  /* chunked coding */
    MOXY_BODY_EOF,      /* until the connection closes (responses only) */
} moxy_body_kind_t;

/* Where the client connection is. */
typedef enum {
    MOXY_C_HEAD = 0,  /* reading a request head (or idle between requests) */
    MOXY_C_ACTIVE,    /* a request is being served */
    MOXY_C_TUNNEL,    /* bytes pass both ways after a 101 */
    MOXY_C_CLOSING,   /* flushing the last bytes, then close */
    MOXY_C_LINGER,    /* half-closed after an answer: reading and dropping what the client
                         still sends, for a while, so that no reset destroys the answer */
} moxy_client_state_t;

/* Where the response of the current request is. */
typedef enum {
    MOXY_R_NONE = 0, /* nothing sent to the client yet */
    MOXY_R_BODY,     /* head sent, body streaming */
    MOXY_R_DONE,     /* the whole response is queued for the client */
} moxy_resp_state_t;

/* The phases whose hooks a request runs (lua_bridge.c), in the order a
 * proxied request meets them; runtime.lua's PHASES list has the same order. */
enum {
    MOXY_PHASE_REQUEST = 0,      /* on_request: the head is in */
    MOXY_PHASE_UPSTREAM,         /* on_upstream: choose the pool/peer, again on each retry */
    MOXY_PHASE_UPSTREAM_REQUEST, /* on_upstream_request: last edits before the origin sees it */
    MOXY_PHASE_RESPONSE,         /* on_response: the origin's head is in */
    MOXY_PHASE_BODY,             /* on_body: each piece of the response body */
    MOXY_PHASE_LOG,              /* on_log: after the last byte */
    MOXY_PHASE_ERROR,            /* on_error: moxy answers with an error */
    MOXY_PHASE_CACHE_KEY,        /* on_cache_key: after on_request, before the cache lookup */
    MOXY_PHASE_TLS_HELLO,        /* on_tls_hello: a TLS client's hello, before any request
                                    (a connection's, not a request's: moxy_lua_run_hello) */
    MOXY_PHASES
};

/* Where a request stands with the cache (txn.cache.status). */
enum { MOXY_CACHE_NONE = 0, MOXY_CACHE_BYPASS, MOXY_CACHE_MISS, MOXY_CACHE_STALE, MOXY_CACHE_HIT, MOXY_CACHE_BACKGROUND };

/* What the cache's sharding over a fleet did for a request (cache/cache_shard.c;
 * the access log's shard= field). */
enum {
    MOXY_SHARD_NONE = 0, /* not sharded: no cache.shard, or not looked up */
    MOXY_SHARD_SELF,     /* this node owns the key: as without sharding */
    MOXY_SHARD_OWNER,    /* a miss sent to the key's owner */
    MOXY_SHARD_FALLBACK, /* its owner could not be reached: to the origin itself */
    MOXY_SHARD_FILL,     /* a peer's fill request, served here as the owner */
};

/* A listening socket of one worker. */
struct moxy_listener_s {
    moxy_worker_t *w;
    int fd;
    int conf_index; /* index into conf->listens */
    struct event ev;
    /* its connections' protocol (worker.h's moxy_accept_fn) */
    void (*accept)(moxy_worker_t *w, int fd, const struct sockaddr *sa, int listen_index);
    struct moxy_tls_server_s *tls; /* its TLS side (net/tls.h), NULL: plain; its generation's */
};

/* A field a hook added to the request's access-log line (txn:log_field). */
typedef struct moxy_log_field_s {
    struct moxy_log_field_s *next;
    char *name, *value;  /* request pool */
    uint32_t name_len, value_len;
    int quoted;          /* a string (escaped, quoted in JSON), else a number or boolean */
} moxy_log_field_t;

/* A client connection's addresses. */
typedef struct {
    uint16_t port;              /* the client's: the PROXY header's source, else sock_port */
    uint16_t sock_port;         /* the TCP peer's */
    char ip[46];                /* the client's address (as port) */
    char sock_ip[46];           /* the TCP peer's address */
} moxy_client_addr_t;

/* What carries a request on when its hooks that yielded are done (rc as
 * moxy_lua_run returns): the code that ran them hands it to moxy_lua_run. */
typedef void (*moxy_hooks_done_fn)(moxy_req_t *r, int rc);

/* What frees the memory of a body piece queued by reference (the shape of
 * libevent's evbuffer_ref_cleanup_cb). */
typedef void (*moxy_ref_release_fn)(const void *data, size_t len, void *arg);
struct evbuffer_file_segment;

/* What the request layer asks of the protocol a request came on (HTTP/1
 * today: http1/), through r->stream with r->stream_ctx (the connection).
 * Every byte of a protocol's framing is written behind these calls; the
 * proxy, the cache and moxy's own answers hand over only the response's
 * status, fields and body bytes.  request.h wraps each call. */
typedef struct {
    /* Keep ctx valid across a call that may close it / let it go (it is
     * freed then if it was closed meanwhile). */
    void (*hold)(void *ctx);
    void (*release)(void *ctx);
    /* Hooks that held request r back are done: read its body on, if r is
     * still ctx's current request (compared only: r may be gone). */
    void (*read_on)(void *ctx, const moxy_req_t *r);
    /* The bytes toward the origin drained below the low watermark: read
     * more of the request body (or of a tunnel). */
    void (*resume_read)(void *ctx);
    /* moxy_req_read_body past the checks every protocol shares (http.h):
     * buffer r's body whole, up to max bytes. */
    int (*read_body)(void *ctx, moxy_req_t *r, uint64_t max);
    /* moxy_req_body_check (http.h): the framing of the body bytes already
     * in, before r's head goes to an origin. */
    int (*body_check)(void *ctx, moxy_req_t *r);
    /* Queue r's response head: r->status, r->resp_headers and the body's
     * size (r->resp_body_kind, r->resp_body_left; r->filtering: unknown),
     * with the framing the protocol chooses; sets r->resp_head_sent.
     * MOXY_ERROR: out of memory. */
    int (*send_head)(void *ctx, moxy_req_t *r);
    /* Queue an interim (1xx) head: status with fields h, or moxy's own
     * 100 Continue when h is NULL.  A client that cannot take one does not
     * get it. */
    void (*send_interim)(void *ctx, moxy_req_t *r, int status, const moxy_headers_t *h);
    /* Queue a piece of r's response body: the first n bytes of from (memory,
     * no more than it holds), moved, or n bytes at data, copied.  Empty
     * pieces queue nothing (a protocol's framing may end the body on one). */
    void (*send_body)(void *ctx, moxy_req_t *r, struct evbuffer *from, size_t n);
    void (*send_data)(void *ctx, moxy_req_t *r, const void *data, size_t n);
    /* A piece of r's response body that stays where it is until it has
     * left: n bytes at data, release(data, n, arg) called then (or when
     * the connection goes); or n bytes from offset off of a file segment.
     * MOXY_ERROR: out of memory (release not called). */
    int (*send_ref)(void *ctx, moxy_req_t *r, const void *data, size_t n, moxy_ref_release_fn release,
                    void *arg);
    int (*send_file)(void *ctx, moxy_req_t *r, struct evbuffer_file_segment *seg, uint64_t off, uint64_t n);
    /* Write what is queued, as much as the connection takes now.  MOXY_OK;
     * otherwise the connection closed (and r may be gone). */
    int (*flush)(void *ctx);
    /* 1 when the queued bytes are above the high watermark: stop reading the
     * origin until resume. */
    int (*backlogged)(void *ctx);
    /* What the connection's transport does with file segments:
     * MOXY_STREAM_SENDFILE when it sends them with sendfile, with
     * MOXY_STREAM_LOCAL_PEER when the peer is on this host. */
    int (*sendfile)(void *ctx);
    /* The whole response of r is queued (its body's end too): what follows
     * it (the next request, or the close).  r may be gone after. */
    void (*response_done)(void *ctx, moxy_req_t *r);
    /* Cut: the response cannot be finished; the connection closes and its
     * request is logged as aborted.  r may be gone after. */
    void (*abort)(void *ctx);
    /* r's 101 head is queued: the connection becomes a two-way tunnel with
     * r's origin connection.  MOXY_OK; MOXY_DONE: it closed meanwhile (r
     * may be gone; the caller holds ctx). */
    int (*tunnel)(void *ctx, moxy_req_t *r);
    /* Bytes of the origin's side of a tunnel (from, all of it; eof: the
     * origin closed).  MOXY_OK: go on reading; MOXY_AGAIN: backlogged, stop
     * reading until resume; MOXY_DONE: the tunnel closed (r may be gone). */
    int (*tunnel_relay)(void *ctx, struct evbuffer *from, int eof);
} moxy_stream_ops_t;

#define MOXY_STREAM_SENDFILE 1
#define MOXY_STREAM_LOCAL_PEER 2

/* What the client side asks of a request's origin side (the proxy's),
 * through r->origin, while r->up is set. */
typedef struct {
    /* The origin connection goes (the client is done or gone): closed,
     * r->up NULL. */
    void (*cut)(moxy_req_t *r);
    /* A piece of the request body toward the origin: n bytes from the
     * front of from (moved), or n bytes at data (copied), framed as the
     * origin's protocol wants; sets r->body_sent.  Nothing is written
     * before send. */
    void (*body)(moxy_req_t *r, struct evbuffer *from, size_t n);
    void (*body_data)(moxy_req_t *r, const char *data, size_t n);
    /* The request body is complete (r->body_done), its trailers in
     * r->trailers: the origin's protocol ends it (once per try). */
    void (*body_end)(moxy_req_t *r);
    /* Write the request bytes queued toward the origin. */
    void (*send)(moxy_req_t *r);
    /* 1 when the bytes toward the origin are above the high watermark: stop
     * reading the client. */
    int (*backlogged)(const moxy_req_t *r);
    /* The client took the response bytes queued for it: read the origin on. */
    void (*resume_read)(moxy_req_t *r);
    /* The response body waits (a filter's hook, a backlogged client): stop
     * reading the origin. */
    void (*pause)(moxy_req_t *r);
    /* A filter took what it was given: read the origin on, and go on now
     * with what it already sent. */
    void (*pump)(moxy_req_t *r);
} moxy_origin_ops_t;

/* What a module runs when a request ends (request.h), and how many
 * different ones a request may have. */
typedef void (*moxy_req_cleanup_fn)(moxy_req_t *r);
#define MOXY_REQ_CLEANUPS 12

/* A request, from its first byte to its access-log line. */
struct moxy_req_s {
    moxy_pool_t mem;       /* its memory: r itself and all it points to (request.h) */
    moxy_req_cleanup_fn cleanups[MOXY_REQ_CLEANUPS]; /* run when it ends, newest first */
    int ncleanups;
    unsigned refs;         /* references (its maker's first): its memory goes with the last */
    unsigned over : 1;     /* moxy_req_end ran */
    unsigned https : 1;    /* it came over TLS */
    const struct moxy_tls_info_s *tls; /* what its TLS connection negotiated (net/tls.h), in mem; or NULL */
    moxy_worker_t *w;      /* the worker it runs on */
    const moxy_stream_ops_t *stream; /* its protocol's side of it */
    void *stream_ctx;      /* for stream's calls; NULL once it outlived its connection */
    const moxy_origin_ops_t *origin; /* its origin side, once a try started */
    const moxy_client_addr_t *addr; /* the client's addresses: its connection's, or a copy */
    LIST_ENTRY(moxy_req_s) detached; /* in its worker's list while it outlives its connection */
    moxy_wgen_t *g;        /* the generation it runs on to its end (a reference) */
    int listen_index;      /* g->conf->listens[] it came in on */
    const struct moxy_mask_conf_s *mask; /* what it tells of origins and of moxy: its listener's */
    llhttp_t parser;       /* the request's head and chunked body */

    /* request head */
    uint8_t method;        /* llhttp_method_t */
    uint8_t http_major, http_minor;
    char *method_name;     /* NUL-terminated, static or pool */
    char *uri;             /* as received; NUL-terminated */
    uint32_t uri_len;
    uint32_t uri_cap;
    uint32_t path_len;     /* uri[0..path_len) is the path, the query follows '?' */
    moxy_headers_t headers;
    moxy_headers_t trailers; /* of a chunked request body */
    char *host;            /* Host header, NUL-terminated, or NULL */
    char id[129];          /* request id, NUL-terminated */
    char *client_ip;       /* the real client (realip.c), request memory; NULL: c->ip */
    int client_port;       /* its port when client_ip is set; -1: the header gave none */

    /* head parsing scratch */
    char *field;           /* header name being assembled */
    char *value;           /* header value being assembled */
    uint32_t field_len, value_len;
    uint32_t field_cap, value_cap;
    size_t head_bytes;     /* bytes of request line + headers so far */
    unsigned in_trailers : 1;
    unsigned head_begun : 1; /* raw head scan: past the empty lines before the request line */
    unsigned head_line : 1;  /* raw head scan: past the request line */
    char head_prev;          /* raw head scan: previous byte */

    /* request body */
    moxy_body_kind_t body_kind;
    uint64_t body_length;  /* Content-Length as received */
    uint64_t body_left;    /* MOXY_BODY_LENGTH: bytes not yet read */
    uint64_t body_read;    /* bytes of body read from the client */
    unsigned body_done : 1;
    unsigned expect_continue : 1;
    unsigned upgrade : 1;      /* Upgrade requested and allowed */
    unsigned keepalive : 1;    /* the client connection may serve another request */
    unsigned has_te : 1;
    unsigned has_cl : 1;
    unsigned te_trailers : 1;  /* the client said TE: trailers (gRPC): HTTP/2 origins are told */
    unsigned hook_done : 1;
    unsigned buffering : 1;     /* txn:read_body: the body goes to body_buf */
    unsigned body_buffered : 1; /* body_buf holds the whole body (sent with Content-Length) */
    unsigned body_sent : 1;     /* a byte of the streamed body or of its framing (a chunk-size
                                   line, the last chunk) went toward an origin: no other try
                                   can send that body again */
    struct evbuffer *body_buf;  /* the buffered body (txn:read_body), or NULL */
    uint64_t body_max;          /* txn:read_body's limit */
    int body_status;            /* 413/400: read_body failed; answered so unless a hook does */
    const char *body_error;     /* why, for the log and read_body's error */
    struct moxy_lua_task_s *body_task; /* the hook waiting for the body */

    void *geo;             /* geoip.c: this request's lookups (request pool), or NULL */
    moxy_log_field_t *log_fields, *log_fields_last; /* txn:log_field's, in order */
    struct moxy_req_defer_s *defers; /* what to do when it ends (moxy_req_defer) */

    /* hooks */
    void *hook;            /* lua_bridge.c's state of hooks parked on an event, or NULL */
    int hook_phase;        /* MOXY_PHASE_* of the hooks that run or are parked */
    moxy_hooks_done_fn hooks_done; /* what follows them when they yielded */
    int txn_ref;           /* registry ref of the request's txn for later phases, 0: none */

    /* upstream */
    int pool;              /* index into conf->upstreams, or -1 */
    moxy_upconn_t *up;
    int tries;             /* tries started (the current one included) */
    int server;            /* index of the peer chosen for this try in the pool, -1: peer_addr */
    int last_server;       /* the peer of the previous try, -1: none */
    int active_server;     /* the peer whose in-flight count this try holds, -1: none */
    int want_server;       /* txn.upstream:pick's {peer = ...}: preferred while usable, -1: none */
    uint64_t tried;        /* bit i: server i of pool tried_pool had a try (pools of <= 64) */
    uint64_t *tried_map;   /* the same for bigger pools (request pool), or NULL */
    int tried_pool;
    uint64_t hash;         /* txn.upstream:pick's hash key, when has_hash */
    long long first_try_ms; /* moxy_mono_ms() when the first try started (retry_timeout) */
    int fail_status;       /* what the failed try would have answered (502/504), for a retry that finds no peer */
    unsigned has_hash : 1;
    unsigned reported : 1;   /* this try's outcome went to passive health */
    unsigned fresh_conn : 1; /* this try must not reuse an idle connection (stale keep-alive resend) */
    const char *peer;      /* "ip:port" of the last peer, for logs */
    struct moxy_addr_s *peer_addr; /* txn.upstream:set_peer's address (request pool), or NULL */
    unsigned retryable : 1;  /* may go to another peer after a failure (idempotent, or said so) */
    unsigned no_filter : 1;  /* on_body hooks skip this response */
    unsigned filtering : 1;  /* the response body goes through the stage: on_body hooks, a coder */
    unsigned filter_hooks : 1; /* of the stage: on_body hooks run */
    unsigned head_held : 1;  /* the head waits for the stage's first output (a decoded body) */
    unsigned filter_eof : 1; /* the origin's body is complete; the last on_body call is due */
    unsigned filter_final : 1; /* the last on_body call ran (or runs) */
    int up_status;         /* the origin's status, before on_response changed it */
    struct timeval up_started, up_header; /* wall clock (cached) of the current try's start and head: cache ages */
    long long up_started_us, up_connected_us; /* moxy_mono_us() of the current try's start, its connection; */
    long long up_header_us, up_done_us;       /* its response head, the origin's last byte (0: not yet) */
    struct evbuffer *filter_in;  /* response body waiting for on_body (lazily created) */
    struct evbuffer *filter_out; /* on_body's output, to be framed for the client */
    moxy_body_tap_t *taps;       /* the response body's taps, in order (body_filter.h) */
    struct moxy_coder_s *coder;  /* the stage's content coder (compress.h), or NULL */
    struct evbuffer *coded;      /* its output */
    uint8_t coding;              /* MOXY_CODING_*: what it does */
    uint8_t coding_enc;          /* the coding it makes or reads (codec/coder.h's MOXY_ENC_*) */
    int8_t compress_want;        /* txn.resp:compress: 1 compress, -1 leave the body as it is, 0 as configured */
    uint8_t compress_enc;        /* its coding, 0: negotiated */
    uint8_t compress_level;      /* its level, 0: the configured one */
    unsigned compress_304 : 1;   /* a 304 whose 200 would be compressed (the cache's, which knows) */

    /* response */
    moxy_resp_state_t resp_state;
    int status;            /* status sent (or to send) to the client */
    moxy_headers_t resp_headers;
    moxy_headers_t resp_trailers;
    moxy_body_kind_t resp_body_kind; /* as received from the origin */
    uint64_t resp_body_left;
    unsigned resp_chunked_out : 1; /* we chunk the body toward the client */
    unsigned resp_head_sent : 1;
    unsigned local : 1;            /* answered by moxy itself (hook, error page) */
    unsigned resp_h2 : 1;          /* the origin answered in HTTP/2 (Via says so) */
    unsigned tunnel : 1;           /* a 101 made its connection a tunnel (stream ops tunnel) */
    unsigned log_waiting : 1;      /* its on_log hooks run (moxy_req_finish) */
    unsigned is_detached : 1;      /* on its worker's detached list (moxy_req_detach) */
    char *local_body;              /* body of a local response */
    size_t local_body_len;
    uint64_t bytes_sent;           /* body bytes queued for the client */
    const char *error;             /* why moxy answered with an error, for the log */

    /* cache (http_cache.c) */
    char *cache_key;               /* the primary key (request pool), or NULL: no lookup */
    uint32_t cache_klen;
    uint64_t cache_hash;
    struct moxy_cache_obj_s *cache_obj;  /* the object a hit serves (a reference), or NULL */
    struct moxy_cache_obj_s *cache_fill; /* the object the origin's response fills, or NULL */
    unsigned cache_lookup : 1;     /* a GET or HEAD looked up: its response may be stored */
    unsigned cache_hit : 1;        /* served from the cache */
    unsigned cache_bypass : 1;     /* txn.cache:bypass(): no lookup, no store */
    unsigned cache_no_store : 1;   /* not stored (request no-store, txn.cache:no_store()) */
    unsigned cache_invalidate : 1; /* an unsafe method: invalidate the URI once answered */
    unsigned char cache_state;     /* MOXY_CACHE_* (txn.cache.status) */
    double cache_ttl, cache_stale; /* txn.cache:store{ttl, stale}; ttl < 0: not set */
    uint64_t cache_from;           /* a hit's first body byte sent (Range) */
    struct moxy_cache_obj_s *cache_reval; /* the stale object a miss keeps (revalidation,
                                             stale-if-error; a reference), or NULL */
    unsigned cache_conditional : 1; /* the origin gets cache_reval's validators (upstream head) */
    const char *cache_etag, *cache_last_modified; /* those validators (into cache_reval), or NULL */
    char *cache_vary;              /* the Vary field names the request's values were made for, or NULL */
    char *cache_vary_values;       /* its values of them (moxy_cache_vary_values) */
    int cache_fwd_status;          /* the origin's status when the answer is cache_reval's (304, 5xx) */
    unsigned cache_leader : 1;     /* its key's request at the origin: others wait for it */
    unsigned cache_collapsed : 1;  /* answered with what another request fetched */
    unsigned cache_streaming : 1;  /* streams from the object another request fills */
    unsigned cache_background : 1;    /* a background refresh of a stale object (stale-while-revalidate) */
    uint64_t cache_sent;           /* of that object, the bytes sent so far */
    struct event *cache_wait;      /* waiting for the leader's response (request pool), or NULL */
    double cache_wait_until;       /* then it goes to the origin itself */
    int cache_wait_ms;             /* the next look's delay */
    moxy_headers_t cache_head;     /* the origin's head before on_response (request pool) */
    const char *cache_fwd;         /* the lookup's Cache-Status ("moxy; fwd=uri-miss"...), added to
                                      the origin's head that answers; NULL: no lookup */

    /* the cache sharded over a fleet (cache/cache_shard.c, proxy/origin_shard.c) */
    unsigned shard_fill : 1;       /* a peer's fill request: only on_log runs, never sent to another node */
    unsigned shard_try : 1;        /* the try under way goes to the key's owner, not to the origin */
    unsigned shard_local : 1;      /* never sent to another node: a mark from a peer's address not believed */
    unsigned char shard_state;     /* MOXY_SHARD_* */
    int shard_owner;               /* the key's owner (a server of cache.shard's pool) + 1; 0: none */
    int shard_origin;              /* the pool the origin would be, while shard_try */

    /* timing */
    struct timeval started; /* wall clock (cached) of its first byte: the log's time, txn.started */
    long long started_us;   /* moxy_mono_us() of its first byte: what measures the request */
    long long ended_us;     /* moxy_mono_us() when it was over (before on_log), 0: not yet */
};

/* A client connection as its worker sees it, whatever its protocol: the
 * first member of the protocol's own connection object (HTTP/1's
 * moxy_client_t), in its worker's list of sessions. */
typedef struct {
    /* Close once what is in flight is answered (QUIT, an upgrade, its
     * listener removed by a reload). */
    void (*drain)(moxy_session_t *s);
    /* Close now: what is in flight ends as aborted. */
    void (*close)(moxy_session_t *s);
    /* Generation g's drain deadline passed: cut what runs on it. */
    void (*cut_gen)(moxy_session_t *s, const moxy_wgen_t *g);
} moxy_session_ops_t;

/* A session's protocol (moxy_session_t.protocol). */
enum { MOXY_PROTO_HTTP1 = 1, MOXY_PROTO_HTTP2 = 2 };

struct moxy_session_s {
    const moxy_session_ops_t *ops;
    int protocol;     /* MOXY_PROTO_*: what the object it heads is */
    int listen_index; /* the current generation's conf->listens[] it came in on;
                         -1: a reload removed that listener */
    LIST_ENTRY(moxy_session_s) link; /* its worker's sessions */
};

/* An HTTP/1 client connection. */
struct moxy_client_s {
    moxy_session_t s;           /* first: what its worker sees */
    moxy_worker_t *w;
    moxy_conn_t conn;           /* the socket and its transport (fd -1: closed) */
    moxy_client_state_t state;
    struct event rev;
    struct event *wev;          /* made when a write first waits for the socket; freed when idle
                                   (an idle keep-alive connection costs its struct and little more) */
    struct evbuffer *in;        /* NULL while idle */
    struct evbuffer *out;       /* NULL while idle */
    moxy_req_t *req;            /* current request, NULL between requests */
    struct timeval head_deadline; /* client_header timeout of the current head; lingering: its end */
    uint64_t linger_bytes;      /* lingering: bytes read and dropped */
    unsigned reading : 1;       /* rev is added */
    unsigned writing : 1;       /* wev is added */
    unsigned eof : 1;           /* the client closed its side */
    unsigned close_after : 1;   /* close once the current response is out */
    unsigned linger : 1;        /* request bytes may be unread: linger when closing */
    unsigned in_process : 1;    /* client_process is on the stack */
    unsigned dead : 1;          /* closed; freed when busy drops to 0 */
    int busy;                   /* event callbacks on the stack that use c */
    unsigned proxy_wait : 1;    /* the PROXY protocol header is still to come */
    unsigned tls_wait : 1;      /* its TLS handshake is not done */
    unsigned h2_maybe : 1;      /* a plain listener with http2: the HTTP/2 preface may come first */
    struct moxy_tls_server_s *tls; /* its listener's TLS side, held until the handshake starts */
    struct moxy_lua_task_s *hello_task; /* its on_tls_hello hooks, parked (the handshake waits) */
    unsigned trusted : 1;       /* ip is in trusted_proxies: requests' real-IP headers count */
    unsigned local_peer : 1;    /* the TCP peer is on this host (loopback or a unix socket) */
    uint32_t read_size;         /* next body read (io.h) */
    moxy_client_addr_t addr;    /* its addresses */
    moxy_conn_slot_t climit;    /* its place under limits.connections_per_client (held: counted) */
};

/* A connection to an origin server. */
struct moxy_upconn_s {
    moxy_worker_t *w;
    moxy_wgen_t *g;             /* the generation whose pool it belongs to */
    moxy_conn_t conn;           /* the socket and its transport */
    int pool;                   /* index into g->conf->upstreams, -1: txn.upstream:set_peer's */
    int server;                 /* index into the pool's servers */
    unsigned addr_gen;          /* the peer's address generation it connected to */
    struct event rev, wev;
    struct evbuffer *in;
    struct evbuffer *out;
    struct moxy_h1_resp_s *resp; /* its response parser (http1/origin_codec.h), allocated with it */
    moxy_req_t *req;            /* the request it serves, NULL while idle */
    unsigned connected : 1;     /* its transport is ready: TCP connected (and TLS done) */
    unsigned tls_wait : 1;      /* connected, its TLS handshake under way */
    unsigned tcp_up : 1;        /* its connect() succeeded at once; not ready yet */
    unsigned reused : 1;        /* served an earlier request */
    unsigned got_bytes : 1;     /* any response byte for the current request */
    unsigned keepalive : 1;     /* may be reused after this response, as far as moxy goes */
    unsigned reading : 1;
    unsigned writing : 1;
    unsigned eof : 1;
    unsigned reset : 1;         /* with eof: the read failed (an RST, a TLS error), not a clean close */
    unsigned write_failed : 1;
    unsigned read_timer : 1;    /* rev carries the upstream read timeout */
    unsigned dead : 1;          /* closed; freed when busy drops to 0 */
    int busy;
    uint32_t read_size;         /* next body read (io.h) */
    moxy_idle_t idle;           /* in its pool's idle list while idle (idle.list set) */

    /* HTTP/2 (proxy/origin_h2.c): u is a stream of a shared connection,
     * not a connection of its own (conn unused, rev its read timer and
     * wake-up, wev the wake-up of its request body's reader); in holds the
     * response's DATA payload, out the request body's payload */
    struct moxy_h2o_s *h2;      /* its connection, or NULL: HTTP/1 */
    TAILQ_ENTRY(moxy_upconn_s) h2_link; /* in its connection's streams, oldest first */
    int32_t stream_id;          /* 0: not submitted yet */
    int h2_status;              /* the :status of the head being received */
    int fail_status;            /* the stream failed: what its try answers (502, 504) */
    const char *fail_why;       /* and why; NULL: it did not fail */
    unsigned h2_head : 1;       /* its final head is in */
    unsigned h2_end : 1;        /* END_STREAM came: the response is whole (eof is set too) */
    unsigned h2_closed : 1;     /* nghttp2 closed the stream */
    unsigned h2_sent : 1;       /* its HEADERS went to the origin */
    unsigned h2_deferred : 1;   /* its body's DATA waits for more of the body */
};

/* A worker's running state of one upstream pool. */
struct moxy_pool_rt_s {
    struct moxy_upstream_s *state;    /* the pool's shared state (carried over by reloads) */
    struct moxy_pool_stats_s *stats;  /* the worker's counts for the pool's name (stats.h) */
    int *current_weight;              /* smooth weighted round-robin state */
    moxy_idle_group_t idle;           /* its idle keep-alive connections: at most keepalive */
    moxy_idle_list_t *idle_lists;     /* per server */
    struct moxy_h2o_list_s *h2_lists; /* per server: its HTTP/2 connections (protocol = "h2") */
};

#endif

/*
 * config.h -- the configuration of one generation, read from the Lua file the
 * user wrote.  lua/moxy/config.lua checks and normalises it; this file turns
 * the result into C structures that live until the configuration is freed.
 */
#ifndef MOXY_CONFIG_H
#define MOXY_CONFIG_H

#include "base/headers.h"
#include "base/moxy.h"

#include <stdatomic.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

enum { MOXY_ALOG_COMBINED = 0, MOXY_ALOG_JSON };

/* The access log's JSON fields (log.fields; config.lua's LOG_FIELDS order). */
enum {
    MOXY_ALF_TIME = 0,
    MOXY_ALF_REQUEST_ID,
    MOXY_ALF_CLIENT,
    MOXY_ALF_METHOD,
    MOXY_ALF_URI,
    MOXY_ALF_PROTOCOL,
    MOXY_ALF_STATUS,
    MOXY_ALF_BYTES,
    MOXY_ALF_UPSTREAM,
    MOXY_ALF_DURATION_MS,
    MOXY_ALF_REFERER,
    MOXY_ALF_USER_AGENT,
    MOXY_ALF_ERROR,
    MOXY_ALF_HOST,
    MOXY_ALF_SOCKET_CLIENT,
    MOXY_ALF_POOL,
    MOXY_ALF_TRIES,
    MOXY_ALF_UPSTREAM_STATUS,
    MOXY_ALF_UPSTREAM_HEADER_MS,
    MOXY_ALF_LISTENER,
    MOXY_ALF_COUNT
};

#define MOXY_SENDFILE_AUTO 2 /* cache.sendfile = "auto" */

typedef struct moxy_addr_s {
    char *text;                  /* as written, e.g. "127.0.0.1:8080" */
    struct sockaddr_storage sa;  /* resolved address */
    socklen_t salen;
} moxy_addr_t;

/* 1 when a and b are the same socket address (family, address and port:
 * the bytes of sa up to salen); text is not compared. */
static inline int moxy_addr_same(const moxy_addr_t *a, const moxy_addr_t *b)
{
    return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/* a's port, or -1 when it is not an IPv4 or IPv6 address. */
static inline int moxy_addr_port(const moxy_addr_t *a)
{
    if (a->sa.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
    if (a->sa.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
    return -1;
}

/* A certificate of a TLS listener: its file (the certificate, then its
 * chain) and its private key's, as paths. */
typedef struct {
    char *cert, *key;
    char *ocsp; /* a DER OCSP response to staple, or NULL */
} moxy_tls_cert_conf_t;

/* A listener's `tls`. */
typedef struct {
    moxy_tls_cert_conf_t *certs;
    int ncerts;
    int refuse_unknown;           /* a client without a name, or with one no certificate serves, is
                                     refused (else it gets the first certificate) */
    int min_version, max_version; /* 12 or 13: TLS 1.2, TLS 1.3 */
    char *ciphers;                /* TLS 1.2 cipher list, or NULL: the default */
    char *ciphersuites;           /* TLS 1.3 suites, or NULL */
    char *groups;                 /* key exchange groups, or NULL */
    char *client_ca;              /* mutual TLS: PEM file of the CAs client certificates chain to */
    int verify_clients;           /* 0: no client certificate asked; 1: optional; 2: required */
    int verify_depth;             /* longest client chain (intermediates) accepted */
    char *ticket_keys;            /* session ticket keys shared with other nodes (80 bytes each), or
                                     NULL: the process's own, rotated */
    int hello_cache;              /* certificates on_tls_hello hooks supplied, kept by name: at most
                                     this many (0: none kept) */
} moxy_tls_conf_t;

/* compression = {...} (http/compress.c): the top level's, or a listener's
 * or a pool's (the top level's with its own keys over it).  Codings are
 * numbered as codec/coder.h's MOXY_ENC_* (gzip 1, br 2, zstd 3). */
typedef struct {
    int enabled;          /* responses are compressed (decompress is apart) */
    uint8_t order[3];     /* the codings moxy makes, preferred first */
    int norder;
    char **types;         /* media-type patterns as configured, lower case (exact, any subtype, or a suffix) */
    int ntypes;
    uint64_t min_length;  /* a body known to be shorter is sent as it is */
    struct {
        int level, window, mem_level; /* mem_level: gzip's only */
    } enc[4];             /* by coding */
    unsigned decompress;  /* bit 1 << coding: decoded for a client that does not accept it */
    uint64_t max_size;    /* a decoded body's largest size */
    double max_ratio;     /* and its largest ratio to what it was decoded from (past 1 MiB) */
} moxy_compress_conf_t;

/* mask = {...} (http/mask.c): what moxy says of the origins and of
 * itself.  The top level's, or a listener's (the top level's with its own
 * keys over it). */
typedef struct moxy_mask_conf_s {
    moxy_field_set_t headers; /* fields removed from origins' (and stored) responses; n 0: none */
    char *server;             /* the Server field of responses that have none, moxy's own
                                 answers included; NULL: none */
    uint32_t server_len;
    char *via;                /* moxy's name in Via (received-by, both ways): "moxy" or a
                                 pseudonym; NULL: no Via */
    char *via_value[3];       /* Via's value for a message received in HTTP/1.0, 1.1 and 2
                                 (MOXY_VIA_*): "1.1 moxy" (NULL: no Via) */
    uint32_t via_len[3];
} moxy_mask_conf_t;

/* The protocol a message came in (the index of moxy_mask_conf_t.via_value). */
enum { MOXY_VIA_10 = 0, MOXY_VIA_11, MOXY_VIA_2 };

typedef struct {
    moxy_addr_t addr;
    char *name;    /* listener name (txn.listener), defaults to the address text */
    int upstream;  /* index into conf->upstreams, or -1 for the default */
    int backlog;
    int proxy_protocol; /* connections start with a PROXY protocol header (v1 or v2) */
    char *upgrade;      /* protocols a tunnel may carry (Upgrade), lower case, comma-separated
                           ("websocket"; "" for none) */
    moxy_tls_conf_t *tls; /* NULL: plain */
    int http2;            /* HTTP/2 too: ALPN "h2" (preferred) with TLS, the preface (prior
                             knowledge) on a plain listener */
    moxy_compress_conf_t *compress; /* its own compression, or NULL: the top level's */
    moxy_mask_conf_t *mask;         /* its own mask, or NULL: the top level's */
} moxy_listen_conf_t;

/* An address block of trusted_proxies: the first bits bits of addr.  IPv4
 * blocks (family 4) use addr[0..4); an IPv4-mapped IPv6 block is stored as
 * the IPv4 block it maps. */
typedef struct {
    uint8_t family; /* 4 or 6 */
    uint8_t bits;   /* prefix length: 0..32 or 0..128 */
    uint8_t addr[16];
} moxy_cidr_t;

/* Which request header names the hops in front of a trusted proxy. */
enum { MOXY_REALIP_XFF = 0, MOXY_REALIP_FORWARDED };

/* An upstream server as configured. */
typedef struct {
    moxy_addr_t addr;   /* text as written; sa/salen set for an IP literal, salen 0 for a name */
    char *name;         /* DNS name to resolve (upstream.c), or NULL for an IP literal */
    uint16_t port;
    int weight;         /* 1..1000 */
    int backup;         /* used only when no primary server is usable */
    int max_conns;      /* requests in flight to it, all workers together; 0: no limit */
    int drain;          /* starts drained (no new requests) */
    double slow_start;  /* seconds its weight ramps up after it comes back; 0: none */
} moxy_server_conf_t;

/* A set of HTTP statuses 0..639. */
typedef struct {
    uint64_t bits[10];
} moxy_status_set_t;

static inline int moxy_status_in(const moxy_status_set_t *s, int status)
{
    return status >= 0 && status < 640 && (s->bits[status >> 6] >> (status & 63)) & 1;
}

/* How a pool spreads requests over its servers (balance = ...). */
enum {
    MOXY_BAL_ROUND_ROBIN = 0, /* smooth weighted round-robin (nginx's) */
    MOXY_BAL_LEAST_CONN,      /* fewest requests in flight per weight */
    MOXY_BAL_EWMA,            /* power of two choices on latency EWMA x in-flight */
    MOXY_BAL_HASH,            /* consistent hashing (Maglev) on a key from Lua */
    MOXY_BAL_RANDOM,          /* random, weighted */
};

/* Active health checks of a pool (health = {...}). */
enum { MOXY_CHECK_NONE = 0, MOXY_CHECK_HTTP, MOXY_CHECK_TCP };

/* A pool's `tls`: moxy speaks TLS to its servers. */
typedef struct {
    int verify;        /* check the server's certificate (chain and name) */
    char *ca;          /* PEM file of the CAs to trust, NULL: the system's */
    char *name;        /* the name asked for (SNI) and verified, NULL: each server's own */
    char *client_cert; /* a certificate (and chain) to present, and its key; NULL: none */
    char *client_key;
    int h2;            /* offer h2 in ALPN (the pool speaks HTTP/2), else http/1.1 */
} moxy_tls_origin_conf_t;

/* What a pool speaks to its servers (protocol = ...). */
enum { MOXY_UP_HTTP1 = 0, MOXY_UP_H2 };

typedef struct {
    char *name;
    moxy_server_conf_t *servers;
    int nservers;
    int keepalive;            /* idle connections kept per worker */
    double keepalive_timeout; /* seconds an idle connection is kept */
    char *host;               /* Host sent to this pool, NULL: the client's */
    moxy_tls_origin_conf_t *tls; /* NULL: plain HTTP to its servers */
    struct moxy_tls_client_s *tls_client; /* tls made ready (net/tls.h), by the generation that loads it */
    int balance;              /* MOXY_BAL_* */
    int protocol;             /* MOXY_UP_*: HTTP/1.1, or HTTP/2 (TLS with ALPN h2, else prior knowledge) */
    int max_streams;          /* HTTP/2: streams a connection carries at once (and no more than
                                 the server's SETTINGS allow) */
    moxy_compress_conf_t *compress; /* its own compression (before the listener's), or NULL */
    int tries;                /* peers a retryable request may try */
    double retry_timeout;     /* seconds from the first try after which none starts; 0: no limit */
    moxy_status_set_t retry_statuses; /* origin statuses that send a retryable request elsewhere */
    double retry_budget;      /* retries may add this share of the pool's requests (10 s window) */
    int retry_budget_min;     /* retries per second allowed whatever the share */
    double resolve;           /* seconds between resolutions of server names */
    struct {                  /* passive health: failures seen by requests */
        int failures;         /* consecutive failures that eject a server; 0: off */
        double window;        /* seconds within which they must fall */
        double backoff;       /* first ejection's length; doubles each time, up to max_backoff */
        double max_backoff;
        moxy_status_set_t statuses; /* origin statuses that count as failures */
        double max_ejected;   /* share of the pool that may be ejected at once */
    } passive;
    struct {                  /* active health checks (health_check.c) */
        int type;             /* MOXY_CHECK_* */
        char *method, *path, *host; /* host NULL: the pool's host, else the server's address */
        moxy_status_set_t statuses; /* statuses that pass */
        char *body;           /* PCRE2 pattern the body must match, or NULL */
        double interval, timeout;
        int healthy, unhealthy; /* consecutive results that flip the state */
    } health;
    struct moxy_upstream_s *state; /* the pool's shared running state (proxy/upstream.c) */
    void (*state_free)(struct moxy_upstream_s *state); /* how its maker frees it */
    struct moxy_conf_s *state_owner; /* NULL: state is this configuration's; else the earlier
                                        one that made it (a reference: state points into it) */
} moxy_upstream_conf_t;

typedef struct {
    char *name; /* geoip.NAME: moxy.geo's db argument */
    char *path;
    int line;   /* of its key in the configuration file, for error messages */
} moxy_geoip_conf_t;

typedef struct {
    char *name;  /* moxy.shared.NAME */
    size_t size; /* bytes */
} moxy_shared_conf_t;

/* fleet = {...}: purges and shared-dict invalidations broadcast over Redis
 * pub/sub (api/fleet.c, docs/fleet.md). */
typedef struct {
    int enabled;          /* fleet = {...} is set */
    char *node;           /* this node's id; NULL: hostname:pid */
    char *channel;        /* the pub/sub channel */
    char *secret;         /* HMAC-SHA256 key of every message; NULL: unsigned */
    size_t secret_len;
    double max_age;       /* seconds: older (or as far ahead) messages are dropped */
    char *host;           /* Redis: an IP literal or a name */
    int port, db;
    char *user, *password; /* NULL: none */
    int tls;              /* 0 plain, 1 TLS verifying, 2 TLS without verifying */
    char *server_name;    /* TLS name; NULL: host */
    double timeout, connect_timeout; /* seconds */
} moxy_fleet_conf_t;

typedef struct moxy_conf_s {
    atomic_int refs; /* its generation's, + each later one's that kept a pool state it made */
    char *path; /* the configuration file */
    char *dir;  /* its directory: relative paths start here */
    int workers; /* 0 until resolved: "auto" */
    char *pid_file; /* where the running moxy writes its PID (`moxy reload`), or NULL */
    int pid_file_set; /* pid_file was written in the file (else the default: not writing it is no error) */
    int watch;      /* reload when the configuration, a script or a moxy.watch'ed file changes */
    char **watched; /* the files the scripts named with moxy.watch (as given, relative to dir) */
    int nwatched;

    moxy_listen_conf_t *listens;
    int nlistens;
    moxy_upstream_conf_t *upstreams;
    int nupstreams;
    int default_upstream; /* index, or -1 */

    moxy_cidr_t *trusted; /* trusted_proxies, in the order written */
    int ntrusted;
    int real_ip_header;   /* MOXY_REALIP_* */

    char **scripts; /* absolute or config-relative paths */
    int *scripts_jit; /* 1: the script's functions may be JIT-compiled (no CPU budget) */
    char **scripts_src; /* a script's source when moxy made it (the access = {...} hooks), else NULL;
                           its path names the configuration for messages */
    int nscripts;
    double cpu_budget; /* seconds one hook call may run before it is stopped; 0: no limit */
    size_t lua_memory; /* bytes a worker's Lua VM may hold while hooks run; 0: no limit */

    struct {
        int enabled;       /* cache = {...} is set */
        size_t size;       /* bytes */
        size_t max_object; /* bytes */
        double coalesce_timeout; /* seconds a miss waits for another's response to the same key; 0: off */
        int request_directives;  /* the client's Cache-Control and Pragma count */
        moxy_cidr_t *purge; /* addresses allowed to PURGE */
        int npurge;
        double stale_if_error; /* seconds a stale object without stale-if-error may answer when
                                  the origin fails; 0: only with the directive */
        int sendfile;       /* a hit's memfd body goes to the socket with sendfile: 1, 0, or
                               MOXY_SENDFILE_AUTO (not to a client on the same host) */
        char **targeted;    /* RFC 9213 fields replacing Cache-Control, in order ("CDN-Cache-Control") */
        int ntargeted;
        /* cache.shard: the fleet's caches as one (cache/cache_shard.c) */
        int shard;          /* cache.shard is set: the fields below say how */
        int shard_pool;     /* the pool of the fleet's nodes (an index of upstreams) */
        int shard_self;     /* this node's server in it */
        char *shard_secret; /* what fill requests carry (Moxy-Shard-Secret), or NULL */
    } cache;

    moxy_compress_conf_t compress; /* the top level's compression */
    moxy_mask_conf_t mask;         /* the top level's mask */
    size_t compress_memory;        /* bytes of compressor state a worker may hold; 0: no limit */

    moxy_shared_conf_t *shared; /* dicts to create (shared_dict.c), sorted by name */
    int nshared;

    moxy_geoip_conf_t *geoip; /* MaxMind databases (geoip.c), sorted by name */
    int ngeoip;

    moxy_fleet_conf_t fleet; /* fleet = {...}: purges and dict invalidations broadcast (api/fleet.c) */

    struct {
        int enabled;        /* admin = {...} is set */
        moxy_addr_t addr;   /* where the admin listener listens */
        char *token;        /* bearer token for requests that change state, or NULL */
    } admin;

    struct {
        char **nameservers; /* "ip:port" texts; none: /etc/resolv.conf */
        int nnameservers;
        double timeout;
    } resolver;

    struct {
        size_t header_bytes; /* request line + headers */
        int headers;         /* header count */
        size_t uri_bytes;
        uint64_t body_bytes;
        int connections;     /* client connections per worker */
        int connections_per_client; /* client connections per client address (IPv6: /64), all
                                       workers; 0: no limit */
        size_t buffer_memory;       /* bytes all connections' buffers may hold before each keeps
                                       less ahead of its peer (http/buffer_budget.h); 0: none */
    } limits;

    struct { /* HTTP/2 toward clients (http2/) */
        int max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS; more are refused */
        int stream_window;          /* SETTINGS_INITIAL_WINDOW_SIZE: a stream's request body in moxy */
        int header_table_size;      /* SETTINGS_HEADER_TABLE_SIZE: the HPACK decoder's table */
        int max_continuations;      /* CONTINUATION frames after a HEADERS */
        int max_resets, reset_rate; /* RST_STREAM from a client: a burst, then per second */
        int max_control_frames;     /* SETTINGS, PING, PRIORITY, WINDOW_UPDATE...: a burst, back in 10 s */
    } http2;

    struct { /* seconds */
        double client_header, client_body, client_send, connect, upstream, keepalive, drain;
        double linger; /* closing with request bytes unread: longest time spent reading them */
    } timeouts;

    struct {
        char *access; /* NULL: off */
        int format;   /* MOXY_ALOG_* */
        unsigned char fields[32]; /* JSON format: the fields (MOXY_ALF_*), in order */
        int nfields;
        char *error;  /* "stderr" or a path */
        int level;    /* MOXY_LOG_* */
    } log;
} moxy_conf_t;

/* The mask of requests that come in on listener listen_index of c: its
 * own, else the top level's. */
static inline const moxy_mask_conf_t *moxy_conf_mask(const moxy_conf_t *c, int listen_index)
{
    if (listen_index >= 0 && listen_index < c->nlistens && c->listens[listen_index].mask)
        return c->listens[listen_index].mask;
    return &c->mask;
}

/* Load and check the configuration file at path.  Returns a new configuration
 * (one reference), or NULL after writing every problem ("file:line: key:
 * message") to err. */
moxy_conf_t *moxy_conf_load(const char *path, FILE *err);

/* The second half of moxy_conf_load: copy the normalised table at index idx
 * of L (what lua/moxy/config.lua's check returns) into a new configuration
 * for path (one reference), or NULL after writing why to err.  L's stack is
 * left as it was.  For a caller that keeps one Lua state for many loads
 * (fuzz/config_fuzz.c). */
struct lua_State;
moxy_conf_t *moxy_conf_from_table(struct lua_State *L, int idx, const char *path, FILE *err);

/* Set m from names (n lower-case field names: copied), server and via
 * (copied; NULL: none).  MOXY_OK, or MOXY_ERROR (out of memory: m holds
 * what was made, for moxy_mask_conf_free). */
int moxy_mask_conf_set(moxy_mask_conf_t *m, const char *const *names, int n, const char *server, const char *via);

/* Free what m holds (not m). */
void moxy_mask_conf_free(moxy_mask_conf_t *m);

/* Index of the pool called name (len bytes) in conf, or -1. */
int moxy_conf_upstream_index(const moxy_conf_t *conf, const char *name, size_t len);

/* Take / drop a reference to conf (any thread); the last one frees it and
 * everything it owns. */
void moxy_conf_hold(moxy_conf_t *conf);
void moxy_conf_release(moxy_conf_t *conf);

#endif

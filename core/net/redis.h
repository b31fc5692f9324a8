/*
 * redis.h -- a Redis client on a thread's event loop, for moxy's own use
 * (cluster rate limits, broadcasts) and for scripts (moxy.redis).
 *
 * hiredis (Debian libhiredis-dev) speaks the protocol: its reader parses
 * replies and its formatter writes commands.  The connections are moxy's
 * own (net/dial.h: names resolved on the event loop, TLS with
 * verification through OpenSSL), because Debian 12's hiredis 0.14 has no
 * TLS, resolves names with a blocking getaddrinfo in its async connect,
 * and has no command timeout.
 *
 * A client (moxy_redis_t) is one server's (host, port, user, password,
 * database, TLS) on one thread: up to pool_size connections, each
 * multiplexed -- requests are written back to back and their replies come
 * in the same order.  A request is one command or a pipeline of several,
 * answered once with all their replies.  AUTH and SELECT go first on each
 * new connection.
 *
 * Failures are quick: a request waits at most the client's timeout (from
 * the moment it is sent, connecting included); a connection that fails
 * or times out fails every request on it and then stays down for a short
 * backoff (100 ms, doubling to 2 s) during which requests fail at once
 * with "redis unavailable: <why>", so a dead Redis costs a request
 * nothing but a refused call.
 *
 * Subscriber mode (moxy_redis_subscribe): one connection holds SUBSCRIBE
 * to a channel and hands each message to a callback; it reconnects and
 * subscribes again by itself after the same backoff.
 *
 * Ownership: a request's callback is called exactly once, from the event
 * loop (never from inside moxy_redis_send), unless the request is
 * cancelled first; the replies belong to the client and are freed after
 * the callback returns.
 */
#ifndef MOXY_REDIS_H
#define MOXY_REDIS_H

#include "net/dial.h"

#include <hiredis/hiredis.h>

#define MOXY_REDIS_POOL_MAX 64
#define MOXY_REDIS_QUEUE_MAX 16384 /* requests waiting on one connection */
#define MOXY_REDIS_ERR_MAX MOXY_DIAL_ERR_MAX

typedef struct moxy_redis_s moxy_redis_t;
typedef struct moxy_redis_req_s moxy_redis_req_t;

/* replies: n of them (one per command, in order) when err is NULL; a
 * reply may be a Redis error (REDIS_REPLY_ERROR).  err: why no replies
 * came ("timeout", "redis unavailable: ...", "closed"). */
typedef void (*moxy_redis_cb)(void *arg, redisReply **replies, int n, const char *err);

typedef struct {
    char *host;          /* an IP literal or a name */
    int port;
    char *user, *password; /* NULL: no AUTH (user NULL: AUTH with the password alone) */
    int db;              /* SELECT db when > 0 */
    int tls;             /* MOXY_DIAL_PLAIN, _TLS, _TLS_NOVERIFY */
    char *server_name;   /* TLS: the name sent and verified (NULL: host) */
    double connect_timeout, timeout; /* seconds */
    int pool_size;       /* connections, 1 to MOXY_REDIS_POOL_MAX */
    size_t max_reply;    /* bytes a reply may take before it is parsed */
} moxy_redis_conf_t;

/* A client of conf's server (conf is copied) on dl's thread.  NULL: out of
 * memory. */
moxy_redis_t *moxy_redis_new(moxy_dialer_t *dl, struct event_base *base, const moxy_redis_conf_t *conf);

/* 1 when a and b name the same server the same way (a client of one
 * serves the other). */
int moxy_redis_conf_same(const moxy_redis_conf_t *a, const moxy_redis_conf_t *b);

/* Free r: its connections close; requests still waiting are not answered
 * and become orphans, each freed by its moxy_redis_cancel. */
void moxy_redis_free(moxy_redis_t *r);

/* Send ncmds commands as one request: command i has argc[i] arguments,
 * taken in order from argv / argvlen.  MOXY_OK: sent, cb(arg, ...) follows
 * (*req: the request, for moxy_redis_cancel); MOXY_ERROR: failed at once
 * (Redis is down, out of memory), err (errlen bytes) says why. */
int moxy_redis_send(moxy_redis_t *r, int ncmds, const int *argc, const char *const *argv,
                    const size_t *argvlen, moxy_redis_cb cb, void *arg, moxy_redis_req_t **req,
                    char *err, size_t errlen);

/* The caller no longer wants req's answer: its callback is not called,
 * and its replies are dropped when they come. */
void moxy_redis_cancel(moxy_redis_req_t *req);

/* The settings r was made with (its own copies). */
const moxy_redis_conf_t *moxy_redis_conf(const moxy_redis_t *r);

/* A reader of replies (hiredis's) whose arrays may announce no more
 * elements than *max_reply bytes could hold (max_reply NULL: 1 MiB; the
 * pointer must outlive the reader).  NULL: out of memory. */
redisReader *moxy_redis_reader_new(const size_t *max_reply);

/* 1 when r can take requests now (not in a failure's backoff). */
int moxy_redis_available(const moxy_redis_t *r);

/* --- subscriber mode --- */

/* A message published on the channel: its payload (len bytes, owned by
 * the client, valid during the call). */
typedef void (*moxy_redis_push_cb)(void *arg, const char *payload, size_t len);

/* The subscription is up (up 1: SUBSCRIBE confirmed) or down (up 0: why
 * says why; a new connection follows after the backoff). */
typedef void (*moxy_redis_state_cb)(void *arg, int up, const char *why);

/* Make r (new, nothing sent on it yet) a subscriber of channel (copied):
 * its first connection opens now and sends SUBSCRIBE after AUTH and
 * SELECT; every message published on the channel goes to push(arg, ...);
 * state(arg, ...) says when the subscription goes up or down.  A
 * connection that fails or closes opens again after the backoff, and
 * subscribes again, until r is freed.  The timeout applies to the
 * handshake and to requests sent on the subscription (PING), not to the
 * waits between messages.  Callbacks come from the event loop, never from
 * inside this call.  MOXY_OK, or MOXY_ERROR: out of memory. */
int moxy_redis_subscribe(moxy_redis_t *r, const char *channel, moxy_redis_push_cb push, moxy_redis_state_cb state,
                         void *arg);

#endif

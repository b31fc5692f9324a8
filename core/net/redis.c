/*
 * redis.c -- the Redis client: connections multiplexing requests in
 * order, hiredis's reader and formatter; see redis.h.
 *
 * A connection's requests wait in one queue, oldest first: the replies
 * that come answer its head.  One timer per connection is armed for the
 * head's deadline; requests are sent in order, so the head is always the
 * one whose time ends first.  Writes are gathered: a request only adds to
 * the connection's output and arms its write event, so all the requests
 * of one turn of the event loop leave in one write.
 */
#include "net/redis.h"

#include <errno.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#define REDIS_READ 65536
#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 2000

enum { C_DOWN, C_CONNECTING, C_UP };

typedef struct redis_conn_s redis_conn_t;

struct moxy_redis_req_s {
    TAILQ_ENTRY(moxy_redis_req_s) link;
    redis_conn_t *c;   /* NULL: an orphan, freed by its cancel */
    int n, got;        /* commands, replies received */
    int handshake;     /* AUTH / SELECT (/ SUBSCRIBE) of a new connection */
    int subscribe;     /* its last command is the subscriber's SUBSCRIBE */
    int cancelled;
    moxy_redis_cb cb;
    void *arg;
    long long deadline; /* ms, coarse monotonic */
    redisReply *replies[];
};

TAILQ_HEAD(redis_reqs_s, moxy_redis_req_s);

struct redis_conn_s {
    moxy_redis_t *r;
    int state;
    moxy_dial_t dial;
    moxy_conn_t conn;
    struct event rev, wev, timer;
    int wev_on;
    struct evbuffer *out;
    redisReader *reader;
    struct redis_reqs_s reqs;
    int nreqs;
    size_t reply_bytes;   /* read since the last complete reply: bounded by max_reply */
    long long down_until; /* ms: no new connection before */
    unsigned gen;         /* counts its connections: a callback may replace it */
    int broken;           /* its output is out of step: the timer fails it */
    int backoff;          /* ms, the next failure's */
    char why[MOXY_REDIS_ERR_MAX];
};

struct moxy_redis_s {
    moxy_dialer_t *dl;
    struct event_base *base;
    moxy_redis_conf_t conf;
    int next; /* round robin */
    /* subscriber mode (moxy_redis_subscribe): conns[0] holds the subscription */
    char *sub_channel;      /* NULL: not a subscriber */
    moxy_redis_push_cb sub_push;
    moxy_redis_state_cb sub_state;
    void *sub_arg;
    int sub_up;             /* SUBSCRIBE confirmed on the current connection */
    struct event sub_retry; /* opens the connection again after its backoff */
    redis_conn_t conns[];
};

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_dialed(moxy_dial_t *d, int rc);
static void sub_down(redis_conn_t *c, const char *why);

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int moxy_redis_conf_same(const moxy_redis_conf_t *a, const moxy_redis_conf_t *b)
{
    return moxy_str_same(a->host, b->host) && a->port == b->port && moxy_str_same(a->user, b->user) &&
           moxy_str_same(a->password, b->password) && a->db == b->db && a->tls == b->tls &&
           moxy_str_same(a->server_name, b->server_name) && a->connect_timeout == b->connect_timeout &&
           a->timeout == b->timeout && a->pool_size == b->pool_size && a->max_reply == b->max_reply;
}

moxy_redis_t *moxy_redis_new(moxy_dialer_t *dl, struct event_base *base, const moxy_redis_conf_t *conf)
{
    int n = conf->pool_size < 1 ? 1 : conf->pool_size > MOXY_REDIS_POOL_MAX ? MOXY_REDIS_POOL_MAX : conf->pool_size;
    moxy_redis_t *r = calloc(1, sizeof(*r) + (size_t)n * sizeof(redis_conn_t));
    if (!r) return NULL;
    r->dl = dl;
    r->base = base;
    r->conf = *conf;
    r->conf.pool_size = n;
    r->conf.host = dup_or_null(conf->host);
    r->conf.user = dup_or_null(conf->user);
    r->conf.password = dup_or_null(conf->password);
    r->conf.server_name = dup_or_null(conf->server_name);
    if (!r->conf.host || (conf->user && !r->conf.user) || (conf->password && !r->conf.password) ||
        (conf->server_name && !r->conf.server_name)) {
        moxy_redis_free(r);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        redis_conn_t *c = &r->conns[i];
        c->r = r;
        c->conn.fd = -1;
        c->dial.conn.fd = -1;
        c->dial.done = conn_dialed;
        c->dial.arg = c;
        c->backoff = REDIS_BACKOFF_MIN_MS;
        TAILQ_INIT(&c->reqs);
        evtimer_assign(&c->timer, base, conn_timer_cb, c);
    }
    return r;
}

/* --- replies: hiredis's reader, with moxy's own objects ---
 *
 * The same redisReply trees as hiredis's own functions make (so
 * freeReplyObject frees them), but an array may announce at most as many
 * elements as its bytes could hold (three each: "+\r\n"): "*2147483647"
 * alone must not allocate 16 GiB. */

static redisReply *reply_new(const redisReadTask *task, int type)
{
    redisReply *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *reply_string(const redisReadTask *task, char *str, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    redisReply *r = reply_new(task, task->type);
    if (!r) {
        free(copy);
        return NULL;
    }
    memcpy(copy, str, len);
    copy[len] = '\0';
    r->str = copy;
    r->len = len;
    return r;
}

static void *reply_array(const redisReadTask *task, int elements)
{
    const size_t *max = task->privdata;
    if (elements < 0 || (size_t)elements > (max ? *max : 1u << 20) / 3) return NULL;
    redisReply **el = NULL;
    if (elements > 0 && !(el = calloc((size_t)elements, sizeof(*el)))) return NULL;
    redisReply *r = reply_new(task, REDIS_REPLY_ARRAY);
    if (!r) {
        free(el);
        return NULL;
    }
    r->element = el;
    r->elements = (size_t)elements;
    return r;
}

static void *reply_integer(const redisReadTask *task, long long value)
{
    redisReply *r = reply_new(task, REDIS_REPLY_INTEGER);
    if (r) r->integer = value;
    return r;
}

static void *reply_nil(const redisReadTask *task)
{
    return reply_new(task, REDIS_REPLY_NIL);
}

static redisReplyObjectFunctions reply_fns = {
    .createString = reply_string,
    .createArray = reply_array,
    .createInteger = reply_integer,
    .createNil = reply_nil,
    .freeObject = freeReplyObject,
};

redisReader *moxy_redis_reader_new(const size_t *max_reply)
{
    redisReader *rd = redisReaderCreateWithFunctions(&reply_fns);
    if (!rd) return NULL;
    rd->maxbuf = 64 * 1024; /* it lets go of a large buffer once it is read */
    rd->privdata = (void *)max_reply;
    return rd;
}

/* --- a connection's end --- */

static void req_free(moxy_redis_req_t *q)
{
    for (int i = 0; i < q->got; i++)
        freeReplyObject(q->replies[i]);
    free(q);
}

/* Close c's connection and its reader; its requests stay queued. */
static void conn_close(redis_conn_t *c)
{
    moxy_dial_cancel(&c->dial);
    if (c->conn.fd >= 0) {
        event_del(&c->rev);
        event_del(&c->wev);
        moxy_conn_close(&c->conn);
    }
    c->wev_on = 0;
    event_del(&c->timer);
    if (c->out) evbuffer_free(c->out);
    c->out = NULL;
    if (c->reader) redisReaderFree(c->reader);
    c->reader = NULL;
    c->reply_bytes = 0;
    c->state = C_DOWN;
}

/* c failed (why): it closes and stays down for its backoff, and every
 * request on it is answered with why.  The callbacks run after c is
 * consistent: they may send again (and be refused during the backoff). */
static void conn_fail(redis_conn_t *c, const char *why)
{
    struct redis_reqs_s failed;
    TAILQ_INIT(&failed);
    TAILQ_CONCAT(&failed, &c->reqs, link);
    c->nreqs = 0;
    conn_close(c);
    snprintf(c->why, sizeof(c->why), "%s", why);
    c->down_until = moxy_mono_ms() + c->backoff;
    c->backoff = c->backoff * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : c->backoff * 2;
    char msg[MOXY_REDIS_ERR_MAX];
    snprintf(msg, sizeof(msg), "%s", why);
    moxy_redis_req_t *q;
    while ((q = TAILQ_FIRST(&failed))) {
        TAILQ_REMOVE(&failed, q, link);
        if (!q->cancelled && q->cb) q->cb(q->arg, NULL, 0, msg);
        req_free(q);
    }
    sub_down(c, msg);
}

void moxy_redis_free(moxy_redis_t *r)
{
    if (!r) return;
    for (int i = 0; i < r->conf.pool_size; i++) {
        redis_conn_t *c = &r->conns[i];
        if (!c->r) continue; /* never set up (moxy_redis_new failed) */
        moxy_redis_req_t *q;
        while ((q = TAILQ_FIRST(&c->reqs))) {
            TAILQ_REMOVE(&c->reqs, q, link);
            c->nreqs--;
            if (q->cancelled || q->handshake || !q->cb) req_free(q);
            else q->c = NULL; /* its owner's cancel frees it */
        }
        conn_close(c);
    }
    if (r->sub_channel) {
        event_del(&r->sub_retry);
        free(r->sub_channel);
    }
    free(r->conf.host);
    free(r->conf.user);
    free(r->conf.password);
    free(r->conf.server_name);
    free(r);
}

/* --- the head's deadline --- */

static void conn_arm_timer(redis_conn_t *c)
{
    moxy_redis_req_t *q = TAILQ_FIRST(&c->reqs);
    if (!q) {
        event_del(&c->timer);
        return;
    }
    long long left = q->deadline - moxy_mono_ms();
    struct timeval tv = {0, 0};
    if (left > 0) {
        tv.tv_sec = (time_t)(left / 1000);
        tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
    }
    evtimer_add(&c->timer, &tv);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    redis_conn_t *c = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    moxy_redis_req_t *q = TAILQ_FIRST(&c->reqs);
    if (c->broken) {
        c->broken = 0;
        conn_fail(c, "out of memory");
        return;
    }
    if (q && q->deadline > moxy_mono_ms()) { /* the coarse clock lags: not yet */
        conn_arm_timer(c);
        return;
    }
    /* the head's replies are late: Redis (or the way to it) is stuck; what
     * follows would be answered later still */
    conn_fail(c, "timeout");
}

/* --- replies --- */

/* A reply came: it answers the head; a complete head goes to its caller. */
static int conn_reply(redis_conn_t *c, redisReply *reply)
{
    moxy_redis_req_t *q = TAILQ_FIRST(&c->reqs);
    if (!q) {
        freeReplyObject(reply);
        return MOXY_ERROR; /* nothing was asked: not a Redis server, or out of step */
    }
    q->replies[q->got++] = reply;
    c->backoff = REDIS_BACKOFF_MIN_MS; /* Redis answers: the next failure backs off little */
    if (q->got < q->n) return MOXY_OK;
    TAILQ_REMOVE(&c->reqs, q, link);
    c->nreqs--;
    if (q->handshake) {
        for (int i = 0; i < q->n; i++) {
            const redisReply *x = q->replies[i];
            int sub = q->subscribe && i == q->n - 1;
            if (x->type == REDIS_REPLY_ERROR ||
                (sub && (x->type != REDIS_REPLY_ARRAY || x->elements < 1 ||
                         x->element[0]->type != REDIS_REPLY_STRING || strcmp(x->element[0]->str, "subscribe") != 0))) {
                char why[MOXY_REDIS_ERR_MAX];
                const char *cmd = sub ? "SUBSCRIBE" : i == 0 && c->r->conf.password ? "AUTH" : "SELECT";
                if (x->type == REDIS_REPLY_ERROR)
                    snprintf(why, sizeof(why), "redis %s failed: %.*s", cmd, (int)(x->len > 200 ? 200 : x->len),
                             x->str);
                else
                    snprintf(why, sizeof(why), "redis %s failed: an unexpected reply", cmd);
                req_free(q);
                conn_fail(c, why);
                return MOXY_DONE;
            }
        }
        if (q->subscribe) {
            conn_arm_timer(c); /* an idle subscription has no deadline */
            req_free(q);
            moxy_redis_t *r = c->r;
            r->sub_up = 1;
            if (r->sub_state) r->sub_state(r->sub_arg, 1, NULL);
            return MOXY_OK;
        }
    }
    conn_arm_timer(c);
    if (!q->cancelled && q->cb) q->cb(q->arg, q->replies, q->n, NULL);
    req_free(q);
    return MOXY_OK;
}

/* 1 when reply is a message pushed on r's channel: ["message", channel,
 * payload]. */
static int sub_message(const moxy_redis_t *r, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return 0;
    const redisReply *k = reply->element[0], *ch = reply->element[1], *p = reply->element[2];
    return k->type == REDIS_REPLY_STRING && k->len == 7 && memcmp(k->str, "message", 7) == 0 &&
           ch->type == REDIS_REPLY_STRING && ch->len == strlen(r->sub_channel) &&
           memcmp(ch->str, r->sub_channel, ch->len) == 0 && p->type == REDIS_REPLY_STRING;
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    redis_conn_t *c = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    char buf[REDIS_READ];
    unsigned gen = c->gen;
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = moxy_conn_recv(&c->conn, buf, sizeof(buf));
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
        if (n <= 0) {
            conn_fail(c, n == 0 ? "closed" : strerror(errno));
            return;
        }
        redisReader *rd = c->reader;
        c->reply_bytes += (size_t)n;
        if (c->reply_bytes > c->r->conf.max_reply) {
            conn_fail(c, "reply too large");
            return;
        }
        if (redisReaderFeed(rd, buf, (size_t)n) != REDIS_OK) {
            conn_fail(c, "out of memory");
            return;
        }
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK) {
                char why[MOXY_REDIS_ERR_MAX];
                snprintf(why, sizeof(why), "protocol error: %s", rd->errstr);
                conn_fail(c, why);
                return;
            }
            if (!reply) break;
            c->reply_bytes = rd->len - rd->pos; /* what is left belongs to the next replies */
            if (c->r->sub_up && sub_message(c->r, reply)) {
                const redisReply *m = reply;
                c->r->sub_push(c->r->sub_arg, m->element[2]->str, m->element[2]->len);
                freeReplyObject(reply);
                if (c->state != C_UP || c->gen != gen) return; /* the callback closed it */
                continue;
            }
            int rc = conn_reply(c, reply);
            if (rc == MOXY_DONE) return; /* c failed */
            if (rc == MOXY_ERROR) {
                conn_fail(c, "protocol error: a reply nobody asked for");
                return;
            }
            if (c->state != C_UP || c->gen != gen) return; /* a callback closed it */
        }
        if ((size_t)n < sizeof(buf) && !moxy_conn_pending(&c->conn)) return;
    }
    event_active(&c->rev, EV_READ, 0); /* more waits: after the others' turn */
}

/* --- writing --- */

static void conn_flush(redis_conn_t *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        ssize_t n = moxy_conn_write(&c->conn, c->out);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            conn_fail(c, errno == EPIPE || errno == ECONNRESET ? "closed" : strerror(errno));
            return;
        }
    }
    int want = evbuffer_get_length(c->out) > 0;
    if (want && !c->wev_on) event_add(&c->wev, NULL);
    else if (!want && c->wev_on) event_del(&c->wev);
    c->wev_on = want;
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    conn_flush(arg);
}

/* Something to send on c: once it is up, at the end of this loop turn. */
static void conn_want_write(redis_conn_t *c)
{
    if (c->state != C_UP || c->wev_on) return;
    event_add(&c->wev, NULL);
    c->wev_on = 1;
}

/* --- connecting --- */

static void conn_dialed(moxy_dial_t *d, int rc)
{
    redis_conn_t *c = d->arg;
    if (rc != MOXY_OK) {
        char why[MOXY_REDIS_ERR_MAX + 32];
        snprintf(why, sizeof(why), "redis unavailable: %s", d->err);
        conn_fail(c, why);
        return;
    }
    c->conn = d->conn;
    d->conn.fd = -1;
    c->state = C_UP;
    event_assign(&c->rev, c->r->base, c->conn.fd, EV_READ | EV_PERSIST, conn_read_cb, c);
    event_assign(&c->wev, c->r->base, c->conn.fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
    event_add(&c->rev, NULL);
    c->wev_on = 0;
    conn_flush(c);
}

/* Append one command to c's output.  MOXY_ERROR: out of memory. */
static int conn_format(redis_conn_t *c, int argc, const char *const *argv, const size_t *argvlen)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, (const char **)argv, argvlen);
    if (len < 0 || !cmd) return MOXY_ERROR;
    int rc = evbuffer_add(c->out, cmd, (size_t)len) == 0 ? MOXY_OK : MOXY_ERROR;
    free(cmd);
    return rc;
}

static moxy_redis_req_t *req_new(redis_conn_t *c, int n)
{
    moxy_redis_req_t *q = calloc(1, sizeof(*q) + (size_t)n * sizeof(redisReply *));
    if (!q) return NULL;
    q->c = c;
    q->n = n;
    double t = c->r->conf.timeout > 0 ? c->r->conf.timeout : 1;
    q->deadline = moxy_mono_ms() + (long long)(t * 1000);
    return q;
}

/* Start a connection for c: the dial, the reader, AUTH and SELECT first
 * in its output.  MOXY_ERROR: err says why (c stays down). */
static int conn_open(redis_conn_t *c, char *err, size_t errlen)
{
    const moxy_redis_conf_t *cf = &c->r->conf;
    c->out = evbuffer_new();
    c->reader = moxy_redis_reader_new(&c->r->conf.max_reply);
    if (!c->out || !c->reader) goto oom;
    int sub = c->r->sub_channel && c == &c->r->conns[0];
    int n = (cf->password ? 1 : 0) + (cf->db > 0 ? 1 : 0) + sub;
    if (n > 0) {
        moxy_redis_req_t *q = req_new(c, n);
        if (!q) goto oom;
        q->handshake = 1;
        q->subscribe = sub;
        int rc = MOXY_OK;
        if (cf->password) {
            const char *argv[3] = {"AUTH", cf->user ? cf->user : cf->password, cf->password};
            size_t lens[3] = {4, strlen(argv[1]), strlen(cf->password)};
            rc = conn_format(c, cf->user ? 3 : 2, argv, lens);
        }
        if (rc == MOXY_OK && cf->db > 0) {
            char db[16];
            int dl = snprintf(db, sizeof(db), "%d", cf->db);
            const char *argv[2] = {"SELECT", db};
            size_t lens[2] = {6, (size_t)dl};
            rc = conn_format(c, 2, argv, lens);
        }
        if (rc == MOXY_OK && sub) {
            const char *argv[2] = {"SUBSCRIBE", c->r->sub_channel};
            size_t lens[2] = {9, strlen(c->r->sub_channel)};
            rc = conn_format(c, 2, argv, lens);
        }
        if (rc != MOXY_OK) {
            free(q);
            goto oom;
        }
        TAILQ_INSERT_TAIL(&c->reqs, q, link);
        c->nreqs++;
        conn_arm_timer(c); /* a server that never answers AUTH must not hold what follows */
    }
    c->dial.connect_timeout = cf->connect_timeout > 0 ? cf->connect_timeout : 1;
    if (moxy_dial_start(&c->dial, c->r->dl, cf->host, strlen(cf->host), cf->port, cf->tls, cf->server_name) !=
        MOXY_OK) {
        snprintf(err, errlen, "redis unavailable: %s", c->dial.err);
        moxy_redis_req_t *q;
        while ((q = TAILQ_FIRST(&c->reqs))) {
            TAILQ_REMOVE(&c->reqs, q, link);
            req_free(q);
        }
        c->nreqs = 0;
        conn_close(c);
        snprintf(c->why, sizeof(c->why), "%s", err);
        c->down_until = moxy_mono_ms() + c->backoff;
        return MOXY_ERROR;
    }
    c->state = C_CONNECTING;
    c->gen++;
    if (sub) event_del(&c->r->sub_retry);
    return MOXY_OK;
oom:
    conn_close(c);
    snprintf(err, errlen, "out of memory");
    return MOXY_ERROR;
}

const moxy_redis_conf_t *moxy_redis_conf(const moxy_redis_t *r)
{
    return &r->conf;
}

int moxy_redis_available(const moxy_redis_t *r)
{
    long long now = moxy_mono_ms();
    for (int i = 0; i < r->conf.pool_size; i++) {
        const redis_conn_t *c = &r->conns[i];
        if (c->state != C_DOWN || now >= c->down_until) return 1;
    }
    return 0;
}

int moxy_redis_send(moxy_redis_t *r, int ncmds, const int *argc, const char *const *argv, const size_t *argvlen,
                    moxy_redis_cb cb, void *arg, moxy_redis_req_t **req, char *err, size_t errlen)
{
    if (ncmds <= 0) {
        snprintf(err, errlen, "no command");
        return MOXY_ERROR;
    }
    /* round robin over the connections that are not backing off */
    long long now = moxy_mono_ms();
    redis_conn_t *c = NULL;
    for (int k = 0; k < r->conf.pool_size; k++) {
        redis_conn_t *x = &r->conns[(r->next + k) % r->conf.pool_size];
        if (x->state != C_DOWN || now >= x->down_until) {
            c = x;
            r->next = (r->next + k + 1) % r->conf.pool_size;
            break;
        }
    }
    if (!c) {
        const char *why = r->conns[0].why;
        if (strncmp(why, "redis unavailable: ", 19) == 0) why += 19;
        snprintf(err, errlen, "redis unavailable: %s", why);
        return MOXY_ERROR;
    }
    if (c->state == C_DOWN && conn_open(c, err, errlen) != MOXY_OK) return MOXY_ERROR;
    if (c->nreqs >= MOXY_REDIS_QUEUE_MAX) {
        snprintf(err, errlen, "too many Redis requests waiting");
        return MOXY_ERROR;
    }
    moxy_redis_req_t *q = req_new(c, ncmds);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    size_t before = evbuffer_get_length(c->out);
    size_t at = 0;
    for (int i = 0; i < ncmds; i++) {
        if (argc[i] <= 0 || conn_format(c, argc[i], argv + at, argvlen + at) != MOXY_OK) {
            /* take back what this request added: the others' bytes stay whole */
            struct evbuffer *keep = evbuffer_new();
            if (keep && evbuffer_remove_buffer(c->out, keep, before) == (int)before) {
                evbuffer_free(c->out);
                c->out = keep;
            } else { /* cannot: fail the connection from the loop, not from here */
                if (keep) evbuffer_free(keep);
                c->broken = 1;
                event_active(&c->timer, EV_TIMEOUT, 1);
            }
            free(q);
            snprintf(err, errlen, argc[i] <= 0 ? "empty command" : "out of memory");
            return MOXY_ERROR;
        }
        at += (size_t)argc[i];
    }
    q->cb = cb;
    q->arg = arg;
    int first = TAILQ_EMPTY(&c->reqs);
    TAILQ_INSERT_TAIL(&c->reqs, q, link);
    c->nreqs++;
    if (first) conn_arm_timer(c);
    conn_want_write(c);
    if (req) *req = q;
    return MOXY_OK;
}

void moxy_redis_cancel(moxy_redis_req_t *q)
{
    if (!q) return;
    if (!q->c) { /* an orphan of a freed client */
        req_free(q);
        return;
    }
    q->cancelled = 1;
}

/* --- subscriber mode --- */

/* Arm r's retry for when conns[0]'s backoff ends. */
static void sub_arm_retry(moxy_redis_t *r)
{
    long long left = r->conns[0].down_until - moxy_mono_ms();
    struct timeval tv = {0, 0};
    if (left > 0) {
        tv.tv_sec = (time_t)(left / 1000);
        tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
    }
    evtimer_add(&r->sub_retry, &tv);
}

/* c (of a subscriber: conns[0]) failed: the subscription is down until
 * the retry after its backoff. */
static void sub_down(redis_conn_t *c, const char *why)
{
    moxy_redis_t *r = c->r;
    if (!r->sub_channel || c != &r->conns[0]) return;
    r->sub_up = 0;
    sub_arm_retry(r);
    if (r->sub_state) r->sub_state(r->sub_arg, 0, why);
}

static void sub_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    moxy_redis_t *r = arg;
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    redis_conn_t *c = &r->conns[0];
    if (c->state != C_DOWN) return; /* a request (PING) opened it meanwhile */
    char err[MOXY_REDIS_ERR_MAX];
    if (conn_open(c, err, sizeof(err)) == MOXY_OK) return;
    /* failed at once (a name that cannot be looked up, out of memory):
     * back off more, and say so */
    c->down_until = moxy_mono_ms() + c->backoff;
    c->backoff = c->backoff * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : c->backoff * 2;
    sub_arm_retry(r);
    if (r->sub_state) r->sub_state(r->sub_arg, 0, err);
}

int moxy_redis_subscribe(moxy_redis_t *r, const char *channel, moxy_redis_push_cb push, moxy_redis_state_cb state,
                         void *arg)
{
    if (r->sub_channel || !(r->sub_channel = strdup(channel))) return MOXY_ERROR;
    r->sub_push = push;
    r->sub_state = state;
    r->sub_arg = arg;
    evtimer_assign(&r->sub_retry, r->base, sub_retry_cb, r);
    event_active(&r->sub_retry, EV_TIMEOUT, 1); /* the first connection, from the loop */
    return MOXY_OK;
}

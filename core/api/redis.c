/*
 * redis.c -- moxy.redis for scripts over net/redis.h; see redis.h.
 *
 * A call (redis_op_t) belongs to the task waiting for it: freed when its
 * answer came (just before the task is woken) or when the bridge cancels
 * it (the task was dropped; the request is then cancelled too and its
 * replies are dropped when they come).
 */
#include "api/redis.h"
#include "http/lifecycle.h"
#include "http/lua_bridge.h"
#include "http/worker.h"
#include "net/redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define EXPORT __attribute__((visibility("default")))

#define REDIS_CLIENTS_MAX 64 /* distinct server settings per worker */

typedef struct {
    moxy_worker_t *w;
    moxy_redis_t *clients[REDIS_CLIENTS_MAX];
    moxy_redis_conf_t confs[REDIS_CLIENTS_MAX]; /* what each was made for (strings the client's copies) */
    int n;
} redis_reg_t;

typedef struct {
    moxy_lua_task_t *task;
    moxy_redis_req_t *req;
    int pipeline;
} redis_op_t;

static void set_err(char *err, size_t errlen, const char *why)
{
    if (err && errlen) snprintf(err, errlen, "%s", why);
}

/* --- replies into Lua --- */

static void push_reply(lua_State *co, const redisReply *r, int depth)
{
    lua_checkstack(co, 4);
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(co, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(co, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_NIL:
        lua_pushlightuserdata(co, NULL); /* moxy.redis.null, as cjson.null */
        break;
    case REDIS_REPLY_ERROR: /* inside an array (EXEC, EVAL): { false, "ERR ..." } */
        lua_createtable(co, 2, 0);
        lua_pushboolean(co, 0);
        lua_rawseti(co, -2, 1);
        lua_pushlstring(co, r->str, r->len);
        lua_rawseti(co, -2, 2);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(co, r->elements > 1 << 24 ? 1 << 24 : (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            if (depth > 16) lua_pushlightuserdata(co, NULL);
            else push_reply(co, r->element[i], depth + 1);
            lua_rawseti(co, -2, (int)i + 1);
        }
        break;
    default:
        lua_pushlightuserdata(co, NULL);
    }
}

void moxy_redis_push_reply(lua_State *L, const redisReply *r)
{
    push_reply(L, r, 0);
}

static void op_done(void *arg, redisReply **replies, int n, const char *err)
{
    redis_op_t *op = arg;
    moxy_lua_task_t *t = op->task;
    int pipeline = op->pipeline;
    free(op);
    lua_State *co = moxy_lua_task_thread(t);
    lua_checkstack(co, 4);
    if (err) {
        lua_pushnil(co);
        lua_pushstring(co, err);
        moxy_lua_task_wake(t, 2);
        return;
    }
    if (!pipeline) {
        if (replies[0]->type == REDIS_REPLY_ERROR) { /* false, err: Redis answered */
            lua_pushboolean(co, 0);
            lua_pushlstring(co, replies[0]->str, replies[0]->len);
            moxy_lua_task_wake(t, 2);
            return;
        }
        push_reply(co, replies[0], 0);
        moxy_lua_task_wake(t, 1);
        return;
    }
    lua_createtable(co, n, 0);
    for (int i = 0; i < n; i++) {
        push_reply(co, replies[i], 0);
        lua_rawseti(co, -2, i + 1);
    }
    moxy_lua_task_wake(t, 1);
}

static void op_cancel(void *arg)
{
    redis_op_t *op = arg;
    moxy_redis_cancel(op->req);
    free(op);
}

/* --- commands a shared connection cannot take --- */

static int name_is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && strncasecmp(s, lit, n) == 0;
}

/* Commands that change the connection for the commands after them, or
 * hold it: never on a shared connection (with what to do instead). */
static const struct {
    const char *name, *why;
} REFUSED[] = {
    {"subscribe", "SUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"psubscribe", "PSUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"ssubscribe", "SSUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"unsubscribe", "UNSUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"punsubscribe", "PUNSUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"sunsubscribe", "SUNSUBSCRIBE is not allowed on moxy's shared Redis connections"},
    {"monitor", "MONITOR is not allowed on moxy's shared Redis connections"},
    {"blpop", "BLPOP blocks the connection: not allowed on moxy's shared Redis connections (use LPOP)"},
    {"brpop", "BRPOP blocks the connection: not allowed on moxy's shared Redis connections (use RPOP)"},
    {"brpoplpush", "BRPOPLPUSH blocks the connection: not allowed on moxy's shared Redis connections"},
    {"blmove", "BLMOVE blocks the connection: not allowed on moxy's shared Redis connections (use LMOVE)"},
    {"blmpop", "BLMPOP blocks the connection: not allowed on moxy's shared Redis connections (use LMPOP)"},
    {"bzpopmin", "BZPOPMIN blocks the connection: not allowed on moxy's shared Redis connections"},
    {"bzpopmax", "BZPOPMAX blocks the connection: not allowed on moxy's shared Redis connections"},
    {"bzmpop", "BZMPOP blocks the connection: not allowed on moxy's shared Redis connections"},
    {"wait", "WAIT blocks the connection: not allowed on moxy's shared Redis connections"},
    {"waitaof", "WAITAOF blocks the connection: not allowed on moxy's shared Redis connections"},
    {"select", "SELECT is not allowed on moxy's shared Redis connections (use the db option)"},
    {"auth", "AUTH is not allowed on moxy's shared Redis connections (use the user and password options)"},
    {"hello", "HELLO is not allowed on moxy's shared Redis connections"},
    {"quit", "QUIT is not allowed on moxy's shared Redis connections"},
    {"reset", "RESET is not allowed on moxy's shared Redis connections"},
    {"sync", "SYNC is not allowed on moxy's shared Redis connections"},
    {"psync", "PSYNC is not allowed on moxy's shared Redis connections"},
    {"readonly", "READONLY is not allowed on moxy's shared Redis connections"},
    {"readwrite", "READWRITE is not allowed on moxy's shared Redis connections"},
    {NULL, NULL},
};

const char *moxy_redis_check_commands(int ncmds, const int *argc, const char **argv, const size_t *argvlen)
{
    size_t at = 0;
    int multi = 0, watch = 0;
    for (int i = 0; i < ncmds; i++) {
        if (argc[i] <= 0) return "empty command";
        const char *name = argv[at];
        size_t n = argvlen[at];
        for (int k = 0; REFUSED[k].name; k++)
            if (name_is(name, n, REFUSED[k].name)) return REFUSED[k].why;
        if (name_is(name, n, "client") && argc[i] > 1 && name_is(argv[at + 1], argvlen[at + 1], "reply"))
            return "CLIENT REPLY is not allowed on moxy's shared Redis connections";
        if (name_is(name, n, "xread") || name_is(name, n, "xreadgroup")) {
            /* options come before STREAMS; what follows are names and ids */
            for (int k = 1; k < argc[i]; k++) {
                const char *a = argv[at + (size_t)k];
                size_t al = argvlen[at + (size_t)k];
                if (name_is(a, al, "streams")) break;
                if (name_is(a, al, "block"))
                    return "XREAD with BLOCK is not allowed on moxy's shared Redis connections";
                if (name_is(a, al, "group") || name_is(a, al, "count")) k += name_is(a, al, "group") ? 2 : 1;
            }
        }
        if (name_is(name, n, "multi")) {
            if (multi) return "MULTI inside MULTI";
            multi = 1;
        } else if (name_is(name, n, "exec") || name_is(name, n, "discard")) {
            if (!multi) return "EXEC or DISCARD without MULTI";
            multi = watch = 0;
        } else if (name_is(name, n, "watch")) {
            if (multi) return "WATCH inside MULTI";
            watch = 1;
        } else if (name_is(name, n, "unwatch")) {
            watch = 0;
        }
        at += (size_t)argc[i];
    }
    if (multi) return "MULTI without EXEC or DISCARD in the same pipeline";
    if (watch) return "WATCH without MULTI ... EXEC in the same pipeline";
    return NULL;
}

/* --- the FFI exports --- */

static redis_reg_t *reg_get(moxy_worker_t *w)
{
    void **slot = moxy_worker_slot(w, &moxy_redis_module);
    if (!*slot) {
        redis_reg_t *reg = calloc(1, sizeof(*reg));
        if (!reg) return NULL;
        reg->w = w;
        *slot = reg;
    }
    return *slot;
}

EXPORT moxy_redis_t *moxy_ffi_redis_client(const char *host, int port, const char *user, const char *password,
                                           int db, int tls, const char *server_name, double connect_timeout,
                                           double timeout, int pool_size, double max_reply, char *err,
                                           size_t errlen)
{
    moxy_worker_t *w = moxy_lua_worker();
    if (!w) {
        set_err(err, errlen, "no worker here (Redis calls run in hooks and timer callbacks)");
        return NULL;
    }
    redis_reg_t *reg = reg_get(w);
    moxy_dialer_t *dl = moxy_worker_dialer(w);
    if (!reg || !dl) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    moxy_redis_conf_t conf = {
        .host = (char *)host,
        .port = port,
        .user = (char *)user,
        .password = (char *)password,
        .db = db,
        .tls = tls,
        .server_name = (char *)server_name,
        .connect_timeout = connect_timeout,
        .timeout = timeout,
        .pool_size = pool_size < 1 ? 1 : pool_size > MOXY_REDIS_POOL_MAX ? MOXY_REDIS_POOL_MAX : pool_size,
        .max_reply = max_reply >= 1 ? (size_t)max_reply : 64u << 20,
    };
    for (int i = 0; i < reg->n; i++)
        if (moxy_redis_conf_same(&reg->confs[i], &conf)) return reg->clients[i];
    if (reg->n == REDIS_CLIENTS_MAX) {
        set_err(err, errlen, "too many Redis servers or settings in one worker (64)");
        return NULL;
    }
    moxy_redis_t *c = moxy_redis_new(dl, w->base, &conf);
    if (!c) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    reg->clients[reg->n] = c;
    reg->confs[reg->n] = *moxy_redis_conf(c);
    reg->n++;
    return c;
}

EXPORT int moxy_ffi_redis_call(moxy_redis_t *c, int ncmds, const int *argc, const char **argv, const size_t *argvlen,
                               int pipeline, char *err, size_t errlen)
{
    moxy_lua_task_t *t = moxy_lua_current_task();
    if (!t) return MOXY_DECLINED;
    const char *why = moxy_redis_check_commands(ncmds, argc, argv, argvlen);
    if (why) {
        set_err(err, errlen, why);
        return MOXY_ERROR;
    }
    redis_op_t *op = calloc(1, sizeof(*op));
    if (!op) {
        set_err(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    op->task = t;
    op->pipeline = pipeline != 0;
    if (moxy_redis_send(c, ncmds, argc, argv, argvlen, op_done, op, &op->req, err, errlen) != MOXY_OK) {
        free(op);
        return MOXY_ERROR;
    }
    moxy_lua_task_wait(t, op, op_cancel);
    return MOXY_OK;
}

static void redis_worker_free(moxy_worker_t *w)
{
    redis_reg_t *reg = *moxy_worker_slot(w, &moxy_redis_module);
    if (!reg) return;
    /* calls still waiting become orphans: their tasks' cancel frees them */
    for (int i = 0; i < reg->n; i++)
        moxy_redis_free(reg->clients[i]);
    free(reg);
    *moxy_worker_slot(w, &moxy_redis_module) = NULL;
}

moxy_module_t moxy_redis_module = {
    .name = "moxy.redis",
    .worker_free = redis_worker_free,
};

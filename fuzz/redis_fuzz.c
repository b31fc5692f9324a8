/*
 * redis_fuzz.c -- what a Redis server (or whatever answers on its port)
 * sends, and what a script asks moxy.redis to send.
 *
 * The first byte chooses.  Even: the rest is a server's byte stream, fed
 * to hiredis's reader in pieces (the second byte sets their size) under
 * the same bounds net/redis.c keeps (max_reply; its reader's objects),
 * and every reply is turned
 * into a Lua value as moxy.redis does (api/redis.c).  Invariants: one Lua
 * value per reply, strings byte for byte, arrays of the reply's length;
 * nothing read past the input.  Odd: the rest is a pipeline, commands
 * separated by '\n' and arguments by ' ', checked by
 * moxy_redis_check_commands against an independent model of what a shared
 * connection refuses.
 */
#include "fuzz.h"
#include "api/redis.h"
#include "net/redis.h"

#include <assert.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <lua.h>
#include <strings.h>

#define MAX_REPLY (1u << 20)

static lua_State *L;

/* The Lua value at idx against reply r (depth as push_reply counts). */
static void check_value(const redisReply *r, int idx, int depth)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        assert(s && n == r->len && memcmp(s, r->str, n) == 0);
        break;
    }
    case REDIS_REPLY_INTEGER:
        assert(lua_type(L, idx) == LUA_TNUMBER);
        break;
    case REDIS_REPLY_ERROR:
        assert(lua_type(L, idx) == LUA_TTABLE && lua_objlen(L, idx) == 2);
        break;
    case REDIS_REPLY_NIL:
        assert(lua_type(L, idx) == LUA_TLIGHTUSERDATA);
        break;
    case REDIS_REPLY_ARRAY:
        assert(lua_type(L, idx) == LUA_TTABLE && lua_objlen(L, idx) == r->elements);
        if (depth > 16) break;
        for (size_t i = 0; i < r->elements; i++) {
            lua_rawgeti(L, idx, (int)i + 1);
            check_value(r->element[i], lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        break;
    }
}

static void replies(const uint8_t *data, size_t size)
{
    size_t piece = 1 + fuzz_take_byte(&data, &size) * 8;
    static const size_t max_reply = MAX_REPLY;
    redisReader *rd = moxy_redis_reader_new(&max_reply);
    if (!rd) abort();
    size_t at = 0;
    while (at < size) {
        size_t n = size - at < piece ? size - at : piece;
        if (rd->len - rd->pos + n > MAX_REPLY) break; /* net/redis.c fails the connection */
        char *copy = fuzz_dup(data + at, n);          /* ASan sees a read past the piece */
        int rc = redisReaderFeed(rd, copy, n);
        free(copy);
        if (rc != REDIS_OK) break;
        at += n;
        int bad = 0;
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK) {
                bad = 1;
                break;
            }
            if (!reply) break;
            int top = lua_gettop(L);
            moxy_redis_push_reply(L, reply);
            assert(lua_gettop(L) == top + 1);
            check_value(reply, top + 1, 0);
            lua_settop(L, top);
            freeReplyObject(reply);
        }
        if (bad) break;
    }
    redisReaderFree(rd);
    lua_gc(L, LUA_GCCOLLECT, 0);
}

/* --- the model of refused commands --- */

static int is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && strncasecmp(s, lit, n) == 0;
}

static int model_ok(int ncmds, const int *argc, const char **argv, const size_t *len)
{
    static const char *const never[] = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
                                        "sunsubscribe", "monitor", "blpop", "brpop", "brpoplpush", "blmove",
                                        "blmpop", "bzpopmin", "bzpopmax", "bzmpop", "wait", "waitaof", "select",
                                        "auth", "hello", "quit", "reset", "sync", "psync", "readonly",
                                        "readwrite"};
    int in_multi = 0, watching = 0;
    size_t at = 0;
    for (int i = 0; i < ncmds; i++) {
        if (argc[i] <= 0) return 0;
        const char *c = argv[at];
        size_t n = len[at];
        for (size_t k = 0; k < sizeof(never) / sizeof(never[0]); k++)
            if (is(c, n, never[k])) return 0;
        if (is(c, n, "client") && argc[i] > 1 && is(argv[at + 1], len[at + 1], "reply")) return 0;
        if (is(c, n, "xread") || is(c, n, "xreadgroup")) {
            int k = 1;
            while (k < argc[i]) { /* option words until STREAMS; GROUP takes two values, the rest one */
                const char *w = argv[at + (size_t)k];
                size_t wl = len[at + (size_t)k];
                if (is(w, wl, "streams")) break;
                if (is(w, wl, "block")) return 0;
                k += is(w, wl, "group") ? 3 : is(w, wl, "count") ? 2 : 1;
            }
        }
        if (is(c, n, "multi")) {
            if (in_multi) return 0;
            in_multi = 1;
        } else if (is(c, n, "exec") || is(c, n, "discard")) {
            if (!in_multi) return 0;
            in_multi = watching = 0;
        } else if (is(c, n, "watch")) {
            if (in_multi) return 0;
            watching = 1;
        } else if (is(c, n, "unwatch")) {
            watching = 0;
        }
        at += (size_t)argc[i];
    }
    return !in_multi && !watching;
}

#define MAX_CMDS 64
#define MAX_ARGS 512

static void commands(const uint8_t *data, size_t size)
{
    char *text = fuzz_dup(data, size);
    int argc[MAX_CMDS];
    const char *argv[MAX_ARGS];
    size_t len[MAX_ARGS];
    int ncmds = 0, nargs = 0;
    size_t i = 0;
    while (i <= size && ncmds < MAX_CMDS && nargs < MAX_ARGS) {
        argc[ncmds] = 0;
        while (i <= size && nargs < MAX_ARGS) { /* arguments until '\n' or the end */
            size_t s = i;
            while (i < size && text[i] != ' ' && text[i] != '\n') i++;
            argv[nargs] = text + s;
            len[nargs] = i - s;
            nargs++;
            argc[ncmds]++;
            if (i >= size || text[i] == '\n') break;
            i++;
        }
        ncmds++;
        i++;
    }
    const char *why = moxy_redis_check_commands(ncmds, argc, argv, len);
    assert((why == NULL) == model_ok(ncmds, argc, argv, len));
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) {
        L = luaL_newstate();
        if (!L) abort();
    }
    unsigned mode = fuzz_take_byte(&data, &size);
    if (mode & 1) commands(data, size);
    else replies(data, size);
    return 0;
}

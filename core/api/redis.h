/*
 * redis.h -- moxy.redis: Redis for scripts (the FFI exports of
 * lua/moxy/redis.lua), over net/redis.h's client.  A hook's call parks it
 * while the worker's event loop runs the request, and wakes it with the
 * replies (turned into Lua values here), or nil and an error.
 *
 * Each worker keeps one client per distinct server settings (at most
 * REDIS_CLIENTS_MAX), made on the first call and kept for the worker's
 * life, so a script may build its moxy.redis objects anywhere, as often as
 * it likes.  Connections are shared by every request of the worker, so
 * commands that change a connection's state for later commands (SELECT,
 * AUTH, SUBSCRIBE, MONITOR, blocking pops, CLIENT REPLY, ...) are refused;
 * MULTI ... EXEC is accepted only whole, inside one pipeline.
 */
#ifndef MOXY_API_REDIS_H
#define MOXY_API_REDIS_H

#include <stddef.h>

/* BEGIN FFI lua/moxy/redis.lua */
typedef struct moxy_redis_s moxy_redis_t;

/* The running worker's client for these settings (strings NUL-ended; user,
 * password and server_name NULL when not set; tls 0 none, 1 verified, 2
 * not verified; timeouts in seconds; max_reply in bytes).  NULL: err
 * (errlen bytes) says why (no worker on this thread, too many clients,
 * out of memory). */
moxy_redis_t *moxy_ffi_redis_client(const char *host, int port, const char *user, const char *password, int db,
                                    int tls, const char *server_name, double connect_timeout, double timeout,
                                    int pool_size, double max_reply, char *err, size_t errlen);

/* Send ncmds commands (command i: argc[i] of the arguments argv/argvlen,
 * in order) for the running hook, which then waits: it is woken with the
 * reply (ncmds 1, pipeline 0: a value, or false and the Redis error), or a
 * table of them (pipeline 1: an error reply is { false, "ERR ..." }), or
 * nil and why nothing came.  MOXY_OK: sent; MOXY_DECLINED: no hook or
 * timer callback runs; MOXY_ERROR: refused or failed at once, err says
 * why. */
int moxy_ffi_redis_call(moxy_redis_t *c, int ncmds, const int *argc, const char **argv, const size_t *argvlen,
                        int pipeline, char *err, size_t errlen);
/* END FFI */

/* --- for fuzz/redis_fuzz.c --- */
struct lua_State;
struct redisReply;

/* Push reply r on L as a script sees it (a nested array at most 16 deep,
 * deeper levels as moxy.redis.null). */
void moxy_redis_push_reply(struct lua_State *L, const struct redisReply *r);

/* NULL when the ncmds commands (as moxy_ffi_redis_call's) may go on a
 * shared connection, else why not. */
const char *moxy_redis_check_commands(int ncmds, const int *argc, const char **argv, const size_t *argvlen);

/* moxy.redis's part in a worker's life (lifecycle.h): its clients, freed with the worker. */
extern struct moxy_module_s moxy_redis_module;

#endif

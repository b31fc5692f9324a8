/*
 * config.h -- the configuration of one generation, read from the Lua file the
 * user wrote.  lua/moxy/config.lua checks and normalises it; this file turns
 * the result into C structures that live until the configuration is freed.
 */
#ifndef MOXY_CONFIG_H
#define MOXY_CONFIG_H

#include "moxy.h"

#include <sys/socket.h>

enum { MOXY_ALOG_COMBINED = 0, MOXY_ALOG_JSON };

typedef struct moxy_addr_s {
    char *text;                  /* as written, e.g. "127.0.0.1:8080" */
    struct sockaddr_storage sa;  /* resolved address */
    socklen_t salen;
} moxy_addr_t;

typedef struct {
    moxy_addr_t addr;
    char *name;    /* listener name (txn.listener), defaults to the address text */
    int upstream;  /* index into conf->upstreams, or -1 for the default */
    int backlog;
} moxy_listen_conf_t;

typedef struct {
    moxy_addr_t addr;
    int weight;
} moxy_server_conf_t;

typedef struct {
    char *name;
    moxy_server_conf_t *servers;
    int nservers;
    int keepalive;            /* idle connections kept per worker */
    double keepalive_timeout; /* seconds an idle connection is kept */
    char *host;               /* Host sent to this pool, NULL: the client's */
    int tries;                /* peers a retryable request may try */
} moxy_upstream_conf_t;

typedef struct {
    char *name;  /* moxy.shared.NAME */
    size_t size; /* bytes */
} moxy_shared_conf_t;

typedef struct {
    char *path; /* the configuration file */
    char *dir;  /* its directory: relative paths start here */
    int workers; /* 0 until resolved: "auto" */

    moxy_listen_conf_t *listens;
    int nlistens;
    moxy_upstream_conf_t *upstreams;
    int nupstreams;
    int default_upstream; /* index, or -1 */

    char **scripts; /* absolute or config-relative paths */
    int *scripts_jit; /* 1: the script's functions may be JIT-compiled (no CPU budget) */
    int nscripts;
    double cpu_budget; /* seconds one hook call may run before it is stopped; 0: no limit */
    size_t lua_memory; /* bytes a worker's Lua VM may hold while hooks run; 0: no limit */

    moxy_shared_conf_t *shared; /* dicts to create (shared_dict.c), sorted by name */
    int nshared;

    struct {
        size_t header_bytes; /* request line + headers */
        int headers;         /* header count */
        size_t uri_bytes;
        uint64_t body_bytes;
        int connections;     /* client connections per worker */
    } limits;

    struct { /* seconds */
        double client_header, client_body, client_send, connect, upstream, keepalive, drain;
    } timeouts;

    struct {
        char *access; /* NULL: off */
        int format;   /* MOXY_ALOG_* */
        char *error;  /* "stderr" or a path */
        int level;    /* MOXY_LOG_* */
    } log;
} moxy_conf_t;

/* Load and check the configuration file at path.  Returns a new configuration,
 * or NULL after printing every problem ("file:line: key: message") to stderr. */
moxy_conf_t *moxy_conf_load(const char *path);

/* Index of the pool called name (len bytes) in conf, or -1. */
int moxy_conf_upstream_index(const moxy_conf_t *conf, const char *name, size_t len);

/* Free a configuration and everything it owns. */
void moxy_conf_free(moxy_conf_t *conf);

#endif

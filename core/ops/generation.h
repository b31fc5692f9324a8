/*
 * generation.h -- configuration generations and hot reload.
 *
 * A generation is one loaded configuration with everything made for it: the
 * pools' shared state (carried over from the generation before by pool name
 * and server address), its listening sockets, and in every worker a Lua VM
 * running its scripts (worker.h's moxy_wgen_t).  A reload (SIGHUP, `moxy
 * reload`, POST /reload, a watched file) makes the next generation on the
 * main thread -- configuration checked, scripts compiled, init hooks run,
 * new listening sockets opened -- then asks every worker to build its VM
 * (worker_init runs) without switching.  Only when every worker succeeded
 * do they all switch, between requests; any failure drops the new
 * generation everywhere and the current one keeps serving.  Requests in
 * flight finish on the generation they started on.
 *
 * Memory: a generation is freed when its last reference goes (the main
 * thread's while current, one per worker's part).  A pool whose definition
 * did not change keeps its state object, which points into the
 * configuration that made it: that configuration is kept (not its
 * generation) while a later one still uses the pool.
 */
#ifndef MOXY_GENERATION_H
#define MOXY_GENERATION_H

#include "base/config.h"

#include <event2/event.h>
#include <stdatomic.h>
#include <stdio.h>

typedef struct moxy_gen_s {
    unsigned id;               /* 1 for the configuration moxy started with, then +1 per reload */
    moxy_conf_t *conf;         /* a reference */
    atomic_int refs;
    int nworkers;
    int *listen_fds;           /* [i * nworkers + worker]: a socket opened for conf->listens[i]
                                  that the worker takes over, or -1 (it has one for that address) */
    struct moxy_tls_server_s **tls; /* [i]: conf->listens[i]'s TLS side (net/tls.h), NULL: plain */
} moxy_gen_t;

/* Load the configuration at path as the generation after cur (NULL: the
 * first): checked, pool state carried over from cur, shared dicts created,
 * scripts loaded and their init hooks run, and (cur set) listening sockets
 * opened for the addresses cur does not listen on (nworkers each; 0: the
 * configuration's workers, -1: no sockets, moxy -t).  NULL after writing
 * every problem ("file:line: key: message") to err. */
moxy_gen_t *moxy_gen_load(const char *path, const moxy_gen_t *cur, int nworkers, FILE *err);

/* Open the listening sockets of g for the addresses cur (NULL: none) does
 * not listen on, nworkers each (moxy_gen_load does it for a reload; the
 * first generation's are opened once upstream names resolved).  A new
 * address another process listens on is refused ("address in use: ADDR")
 * unless its port is this process's already (cur's, or inherited in an
 * upgrade).  MOXY_OK, or MOXY_ERROR after writing why to err. */
int moxy_gen_listen(moxy_gen_t *g, const moxy_gen_t *cur, FILE *err);

/* Whether another socket listens on addr: bind without SO_REUSEPORT (which
 * only a listener's presence refuses).  EADDRINUSE when one does, else 0. */
int moxy_listen_probe(const moxy_addr_t *addr);

/* Take / drop a reference to g (any thread); the last one frees it. */
void moxy_gen_hold(moxy_gen_t *g);
void moxy_gen_release(moxy_gen_t *g);

/* A worker's socket for conf->listens[i] of g, handed over: -1 when there is
 * none (the worker keeps the one it has for that address). */
int moxy_gen_take_listen_fd(moxy_gen_t *g, int i, int worker);

/* --- reloads (main thread) --- */

struct moxy_worker_s;

/* What the last reload did, for admin and `moxy reload`. */
typedef struct {
    unsigned seq;              /* reloads attempted so far */
    int ok;                    /* the last one succeeded */
    unsigned generation;       /* the generation serving now */
    double at;                 /* wall-clock time of the last one (0: none yet) */
    double took;               /* seconds it took */
    unsigned long long reloads, failures; /* succeeded / failed, since start */
    char message[2048];        /* "generation N serving" or the errors (file:line: message) */
} moxy_reload_status_t;

typedef void (*moxy_reload_cb)(const moxy_reload_status_t *st, void *arg);

/* Reloads of path on base for these workers, first serving: moxy_reload
 * keeps it as the current generation.  status_path (NULL: none) is where
 * each reload's result is written for `moxy reload` ("seq ok|failed
 * generation pid path\nmessage\n"; seq 0 at once, so that `moxy reload`
 * knows which configuration this process reloads).  MOXY_OK or
 * MOXY_ERROR. */
int moxy_reload_init(struct event_base *base, struct moxy_worker_s **workers, int n, const char *path,
                     moxy_gen_t *first, const char *status_path);

/* Start a reload, or, when one runs, another after it.  cb (may be NULL)
 * is called once with the result of a reload that started after this
 * call. */
void moxy_reload(moxy_reload_cb cb, void *arg);

/* The generation serving now. */
moxy_gen_t *moxy_gen_current(void);

/* 1 while a reload is under way. */
int moxy_reload_running(void);

/* The last reload's result. */
const moxy_reload_status_t *moxy_reload_status(void);

/* Replace the file at path by one holding text, atomically: written to
 * "path.tmp", then renamed over path (the PID file, the reload status
 * file).  MOXY_OK, or MOXY_ERROR with errno saying why (no .tmp left). */
int moxy_file_replace(const char *path, const char *text);

/* Called on a worker's thread when its answer to MOXY_WORKER_PREPARE is in
 * w->prepare_result. */
void moxy_reload_worker_prepared(void);

/* Drop the current generation's main-thread reference and anything a
 * reload in progress holds (the workers have ended). */
void moxy_reload_shutdown(void);

#endif

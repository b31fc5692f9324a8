/*
 * workers.h -- worker threads: their start, their end, and what the main
 * thread tells them.  The main thread talks to a worker only through
 * moxy_worker_signal(), which sets a flag and writes the worker's eventfd.
 * (A worker as its requests see it: http/worker.h.)
 */
#ifndef MOXY_WORKERS_H
#define MOXY_WORKERS_H

#include "http/worker.h"

enum {
    MOXY_WORKER_DRAIN = 1,   /* stop accepting, finish in-flight requests, exit */
    MOXY_WORKER_STOP = 2,    /* exit now */
    MOXY_WORKER_PREPARE = 4, /* build w->pending's generation (its VM), report to the main thread */
    MOXY_WORKER_COMMIT = 8,  /* switch to the prepared generation */
    MOXY_WORKER_ABORT = 16,  /* drop the prepared generation */
};

struct moxy_gen_s; /* generation.h */

/* Create worker id for gen: takes its listening sockets and builds its
 * part of the generation (Lua VM, worker_init).  NULL when out of memory;
 * w->error says why it cannot run.  The worker does not run until started. */
moxy_worker_t *moxy_worker_new(struct moxy_gen_s *gen, int id);

/* Run the worker's loop on a new thread.  MOXY_OK or MOXY_ERROR. */
int moxy_worker_start(moxy_worker_t *w);

/* Ask a running worker to drain or stop (MOXY_WORKER_*); safe from any thread. */
void moxy_worker_signal(moxy_worker_t *w, int command);

/* Wait for the worker's thread to end, then free the worker. */
void moxy_worker_join_free(moxy_worker_t *w);

/* Called on each worker's thread as it ends (main.c): wakes the main thread. */
void moxy_main_worker_exited(void);

#endif

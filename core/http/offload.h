/*
 * offload.h -- work too slow for a worker's event loop (a bcrypt password
 * check: tens of milliseconds of CPU) done on a small pool of threads of
 * the process, its result handed back to the worker that asked.
 *
 * The pool (MOXY_OFFLOAD_THREADS threads) starts on the first job.  A job's
 * work(arg) runs on a pool thread: it must touch nothing of the worker's
 * (no Lua, no events, no request), only what arg holds.  Then done(arg)
 * runs on the worker's loop, once, whatever happened to whoever asked: a
 * caller that goes away in the meantime marks arg so that done only frees
 * it.  When the worker ends, its jobs' done still run after their work,
 * with stopping 1 (wake nothing: the worker's tasks are being dropped).
 */
#ifndef MOXY_OFFLOAD_H
#define MOXY_OFFLOAD_H

#include "http/http-t.h"

#define MOXY_OFFLOAD_THREADS 2
#define MOXY_OFFLOAD_QUEUE 1024 /* jobs waiting in the process, at most */

/* Queue work(arg) for the pool, done(arg, 0) to run on w's loop after it.
 * MOXY_OK; MOXY_ERROR: the queue is full or moxy out of memory (nothing
 * queued, neither is called). */
int moxy_offload(moxy_worker_t *w, void (*work)(void *arg), void (*done)(void *arg, int stopping), void *arg);

/* The offload's part in a worker's life (lifecycle.h): w ends: wait for
 * its jobs and run their done. */
extern struct moxy_module_s moxy_offload_module;

#endif

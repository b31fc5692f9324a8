/*
 * lifecycle.h -- the modules that take part in moxy's life beyond a
 * request: what they do when a reload commits, when a worker makes or
 * frees its part of a generation, every second, when it drains, when it
 * stops; and a slot of their own in each worker.
 *
 * ops/main.c registers them at start-up, before the first generation is
 * made; generation.c and workers.c run the lists and know no module by
 * name.  A module sets only the calls it needs.
 */
#ifndef MOXY_LIFECYCLE_H
#define MOXY_LIFECYCLE_H

#include "base/config.h"
#include "http/http-t.h"
#include "http/worker.h"

struct event_base;

typedef struct moxy_module_s {
    const char *name;
    int slot; /* set by moxy_module_register: the index of its worker slot */
    /* Main thread: a reload committed conf; the module's services follow
     * it.  MOXY_ERROR: logged (naming the module); the rest go on. */
    int (*reload)(moxy_conf_t *conf, struct event_base *base);
    /* A worker made its part of generation g (MOXY_ERROR: g->w->error
     * says why, and g is freed) / frees it (also a g whose making failed
     * half-way: only what was made is freed). */
    int (*wgen_init)(moxy_wgen_t *g);
    void (*wgen_free)(moxy_wgen_t *g);
    /* A worker moves from generation old to g (both made). */
    void (*wgen_switch)(moxy_wgen_t *old, moxy_wgen_t *g);
    /* Each worker, once a second, on its thread. */
    void (*worker_tick)(moxy_worker_t *w);
    /* A worker starts to drain (QUIT, an upgrade): nothing new starts. */
    void (*worker_drain)(moxy_worker_t *w);
    /* A worker's loop is over (or never ran): free its slot. */
    void (*worker_free)(moxy_worker_t *w);
} moxy_module_t;

/* Register m (main thread, at start-up, before any worker is made; m
 * lives as long as the process).  More than MOXY_MODULES is a bug, and
 * aborts. */
void moxy_module_register(moxy_module_t *m);

/* m's slot in worker w: NULL until the module sets it. */
static inline void **moxy_worker_slot(moxy_worker_t *w, const moxy_module_t *m)
{
    return &w->slots[m->slot];
}

/* The registered modules' calls, in registration order (frees in the
 * reverse order). */
void moxy_modules_reload(moxy_conf_t *conf, struct event_base *base);
int moxy_modules_wgen_init(moxy_wgen_t *g);
void moxy_modules_wgen_free(moxy_wgen_t *g);
void moxy_modules_wgen_switch(moxy_wgen_t *old, moxy_wgen_t *g);
void moxy_modules_worker_tick(moxy_worker_t *w);
void moxy_modules_worker_drain(moxy_worker_t *w);
void moxy_modules_worker_free(moxy_worker_t *w);

#endif

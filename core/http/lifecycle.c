/*
 * lifecycle.c -- the registered modules and their calls; see lifecycle.h.
 */
#include "http/lifecycle.h"
#include "base/log.h"

#include <stdlib.h>

static moxy_module_t *modules[MOXY_MODULES];
static int nmodules;

void moxy_module_register(moxy_module_t *m)
{
    if (nmodules == MOXY_MODULES) {
        moxy_log_err("more than %d modules", MOXY_MODULES);
        abort();
    }
    m->slot = nmodules;
    modules[nmodules++] = m;
}

void moxy_modules_reload(moxy_conf_t *conf, struct event_base *base)
{
    for (int i = 0; i < nmodules; i++)
        if (modules[i]->reload && modules[i]->reload(conf, base) != MOXY_OK)
            moxy_log_err("reload: %s cannot follow the new configuration", modules[i]->name);
}

int moxy_modules_wgen_init(moxy_wgen_t *g)
{
    for (int i = 0; i < nmodules; i++)
        if (modules[i]->wgen_init && modules[i]->wgen_init(g) != MOXY_OK) return MOXY_ERROR;
    return MOXY_OK;
}

void moxy_modules_wgen_free(moxy_wgen_t *g)
{
    for (int i = nmodules - 1; i >= 0; i--)
        if (modules[i]->wgen_free) modules[i]->wgen_free(g);
}

void moxy_modules_wgen_switch(moxy_wgen_t *old, moxy_wgen_t *g)
{
    for (int i = 0; i < nmodules; i++)
        if (modules[i]->wgen_switch) modules[i]->wgen_switch(old, g);
}

void moxy_modules_worker_tick(moxy_worker_t *w)
{
    for (int i = 0; i < nmodules; i++)
        if (modules[i]->worker_tick) modules[i]->worker_tick(w);
}

void moxy_modules_worker_drain(moxy_worker_t *w)
{
    for (int i = 0; i < nmodules; i++)
        if (modules[i]->worker_drain) modules[i]->worker_drain(w);
}

void moxy_modules_worker_free(moxy_worker_t *w)
{
    for (int i = nmodules - 1; i >= 0; i--)
        if (modules[i]->worker_free) modules[i]->worker_free(w);
}

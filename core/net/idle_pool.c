/*
 * idle_pool.c -- keep-alive connections to origins, idle between requests
 * (see idle_pool.h).
 */
#include "net/idle_pool.h"
#include "base/moxy.h"

#include <stddef.h>

void moxy_idle_list_init(moxy_idle_list_t *l, moxy_idle_group_t *group, int max)
{
    TAILQ_INIT(&l->conns);
    l->n = 0;
    l->max = max;
    l->group = group;
}

int moxy_idle_put(moxy_idle_list_t *l, moxy_idle_t *i)
{
    moxy_idle_group_t *g = l->group;
    if (g->n >= g->max || (l->max > 0 && l->n >= l->max)) return MOXY_DECLINED;
    TAILQ_INSERT_HEAD(&l->conns, i, link);
    l->n++;
    g->n++;
    i->list = l;
    event_add(i->ev, g->timeout);
    return MOXY_OK;
}

void moxy_idle_remove(moxy_idle_t *i)
{
    moxy_idle_list_t *l = i->list;
    if (!l) return;
    TAILQ_REMOVE(&l->conns, i, link);
    l->n--;
    l->group->n--;
    i->list = NULL;
}

moxy_idle_t *moxy_idle_take(moxy_idle_list_t *l)
{
    moxy_idle_t *i = TAILQ_FIRST(&l->conns);
    if (i) moxy_idle_remove(i);
    return i;
}

void moxy_idle_move(moxy_idle_list_t *from, moxy_idle_list_t *to)
{
    moxy_idle_t *i;
    while ((i = TAILQ_LAST(&from->conns, moxy_idle_list_head_s))) {
        moxy_idle_remove(i);
        TAILQ_INSERT_HEAD(&to->conns, i, link);
        to->n++;
        to->group->n++;
        i->list = to;
    }
}

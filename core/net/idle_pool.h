/*
 * idle_pool.h -- keep-alive connections to origins, idle between requests:
 * the pool the proxy and moxy.http share (health checks close every round's
 * connection and keep none).
 *
 * A list holds the idle connections to one destination (a proxy pool's
 * server, a moxy.http "host:port"), newest first: the next request takes
 * the one most recently used, the least likely to have been closed by the
 * origin.  Lists belong to a group (a proxy pool, a worker's moxy.http)
 * whose bound counts them together; a list may have a bound of its own.
 *
 * The pool keeps no memory of its own: an idle connection is a moxy_idle_t
 * inside its owner's connection object, and its read event is the owner's,
 * armed by moxy_idle_put with the group's idle timeout.  While a connection
 * is idle, that event firing (the origin closed, sent what nobody asked
 * for, or the timeout) means the owner removes it and closes it.  All of a
 * group's lists belong to one thread.
 */
#ifndef MOXY_IDLE_POOL_H
#define MOXY_IDLE_POOL_H

#include <event2/event.h>
#include <stddef.h>
#include <sys/queue.h>
#include <sys/time.h>

typedef struct moxy_idle_s moxy_idle_t;

typedef struct {
    int n, max;                     /* idle connections of all its lists, and their bound */
    const struct timeval *timeout;  /* how long one stays idle (a common timeout) */
} moxy_idle_group_t;

typedef struct {
    TAILQ_HEAD(moxy_idle_list_head_s, moxy_idle_s) conns; /* newest first */
    int n, max;                      /* max 0: only the group's bound */
    moxy_idle_group_t *group;
} moxy_idle_list_t;

/* The owner of i, a member called member of a type: MOXY_IDLE_OWNER(i, moxy_upconn_t, idle). */
#define MOXY_IDLE_OWNER(i, type, member) ((type *)(void *)((char *)(i) - offsetof(type, member)))

/* An idle connection, inside its owner's connection object. */
struct moxy_idle_s {
    struct event *ev;       /* the owner's read event on the connection's socket */
    moxy_idle_list_t *list; /* where it waits; NULL while it is in use */
    TAILQ_ENTRY(moxy_idle_s) link;
};

/* An empty list in group, holding at most max (0: any number). */
void moxy_idle_list_init(moxy_idle_list_t *l, moxy_idle_group_t *group, int max);

/* Keep i idle in l, its read event armed with the group's timeout:
 * MOXY_OK, or MOXY_DECLINED when a bound says no (the caller closes it). */
int moxy_idle_put(moxy_idle_list_t *l, moxy_idle_t *i);

/* The newest idle connection of l, out of it (its event still armed, for
 * the caller to re-arm), or NULL when l has none. */
moxy_idle_t *moxy_idle_take(moxy_idle_list_t *l);

/* i leaves its list (it is being closed); nothing when it is in use. */
void moxy_idle_remove(moxy_idle_t *i);

/* Every connection of from joins to (a reload's new generation of the same
 * pool), newest still first; the groups' counts follow. */
void moxy_idle_move(moxy_idle_list_t *from, moxy_idle_list_t *to);

#endif

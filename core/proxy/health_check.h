/*
 * health_check.h -- active health checks of upstream peers, run from one
 * place (the main thread's event loop) for the whole process, so N workers
 * do not send N times the checks.  Each peer of a pool with `health = {...}`
 * is checked every interval: an HTTP request (method, path, Host) whose
 * status must be in health.statuses and whose body must match health.body
 * when set, or a TCP connect only (type = "tcp"), within health.timeout.
 * `unhealthy` consecutive failures mark the peer unhealthy, `healthy`
 * consecutive passes mark it healthy again (moxy_peer_set_checked); every
 * worker sees the verdict at its next pick.
 */
#ifndef MOXY_HEALTH_CHECK_H
#define MOXY_HEALTH_CHECK_H

#include "base/config.h"

#include <event2/event.h>

/* Start checking every peer of every pool of conf that has health checks,
 * on base (the first round at once).  conf's pool state must exist
 * (moxy_upstreams_create).  MOXY_OK, or MOXY_ERROR after logging why. */
int moxy_health_start(moxy_conf_t *conf, struct event_base *base);

/* Stop every check and free what moxy_health_start made (before conf and
 * base are freed).  Safe when nothing was started. */
void moxy_health_stop(void);

/* The health checks follow each reload (lifecycle.h). */
extern struct moxy_module_s moxy_health_module;

#endif

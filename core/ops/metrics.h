/*
 * metrics.h -- the Prometheus text rendering of what moxy counts (the
 * counts: http/stats.h).
 */
#ifndef MOXY_METRICS_H
#define MOXY_METRICS_H

#include "base/config.h"
#include "http/stats.h"

struct evbuffer;

/* Append every metric, in Prometheus' text format (version 0.0.4), to out:
 * the n workers' counts summed, the upstream pools' shared state, the
 * shared dicts; uptime in seconds.  MOXY_OK or MOXY_ERROR (out of memory). */
int moxy_metrics_render(struct evbuffer *out, moxy_worker_t *const *workers, int n, const moxy_conf_t *conf,
                        double uptime);

#endif

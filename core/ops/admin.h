/*
 * admin.h -- the admin listener (`admin = { listen, token }`): an HTTP
 * server on the main thread's loop (libevent's evhttp) for operators.
 *
 *   GET  /                                 the status page (admin_page.h), with
 *                                          /status.js and /status.css
 *   GET  /history                          JSON: the last five minutes, one
 *                                          sample a second (admin_history.h)
 *   GET  /status                           JSON: version, uptime, generation,
 *                                          the last reload, workers,
 *                                          connections, requests, pools and
 *                                          their peers, shared dicts
 *   GET  /metrics                          Prometheus text format (metrics.h)
 *   POST /purge?key=K | ?prefix=P          drop cached objects: {"purged":N}
 *   POST /reload                           reload; answered with the result
 *                                          (200, or 422 with the errors)
 *   POST /peers/{pool}/{peer}/drain        drain a peer (every worker)
 *   POST /peers/{pool}/{peer}/enable       take it back
 *
 * Requests that change state need `Authorization: Bearer <admin.token>`;
 * without a configured token they are refused.
 */
#ifndef MOXY_ADMIN_H
#define MOXY_ADMIN_H

#include "base/config.h"
#include "ops/workers.h"

#include <event2/event.h>

struct evbuffer;

/* Listen on conf->admin.addr on base for the n workers.  MOXY_OK (also
 * when conf has no admin listener), or MOXY_ERROR after logging why. */
int moxy_admin_start(const moxy_conf_t *conf, struct event_base *base, moxy_worker_t *const *workers, int n);

/* A reload: conf is the configuration serving now (pools, token). */
void moxy_admin_set_conf(const moxy_conf_t *conf);

/* Close the admin listener (before the workers and conf are freed). */
void moxy_admin_stop(void);


/* The admin listener follows each reload (lifecycle.h). */
extern struct moxy_module_s moxy_admin_module;

#endif

/*
 * watch.h -- `watch = true`: reload when the configuration file, one of its
 * scripts, or a file a script named with moxy.watch(path) changes.
 *
 * inotify on the main thread's loop.  The directories holding the files are
 * watched, not the files, so that an editor's or a deploy's
 * write-then-rename is seen as a change of the name it replaces.  Changes
 * are debounced: a reload starts once no watched file changed for
 * MOXY_WATCH_DEBOUNCE_MS (a deploy that writes ten files reloads once).
 */
#ifndef MOXY_WATCH_H
#define MOXY_WATCH_H

#include "base/config.h"

#include <event2/event.h>

#define MOXY_WATCH_DEBOUNCE_MS 200

/* Watch conf's files on base when conf->watch is set (and stop watching
 * the previous configuration's): at start and after each reload that
 * succeeded.  A change calls moxy_reload.  MOXY_OK, or MOXY_ERROR after
 * logging why (inotify unavailable). */
int moxy_watch_set(const moxy_conf_t *conf, struct event_base *base);

/* Stop watching and free everything (exit). */
void moxy_watch_stop(void);

/* The watched files follow each reload (lifecycle.h). */
extern struct moxy_module_s moxy_watch_module;

#endif

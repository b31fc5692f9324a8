/*
 * modules.h -- what a moxy process is made of, put together once at
 * start-up: the modules of lifecycle.h, the request's content handler, the
 * cache handed to the proxy, the parsers' settings.
 */
#ifndef MOXY_MODULES_H
#define MOXY_MODULES_H

/* Register and hand over all of it (main thread, first thing; again: no-op). */
void moxy_modules_setup(void);

#endif

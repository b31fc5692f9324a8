/*
 * event_mem.h -- libevent's memory (event_set_mem_functions) through a small
 * per-thread cache of the block sizes evbuffers use.
 *
 * Every request fills and empties a few evbuffers; libevent frees a chain
 * when it is drained and allocates a new one at the next read or write, and
 * its chains (4 KiB and up) are past glibc's per-thread cache: ~230
 * instructions a malloc/free pair, ~4 pairs a request.  From the cache: ~60.
 */
#ifndef MOXY_EVENT_MEM_H
#define MOXY_EVENT_MEM_H

/* Route libevent's allocations through the cache.  Once, at start, before
 * any other libevent call.  Builds with AddressSanitizer keep plain malloc
 * (a cache would hide a chain's use after free). */
void moxy_event_mem_init(void);

/* Give the calling thread's cached blocks back to malloc (also done when a
 * thread exits). */
void moxy_event_mem_release(void);

#endif

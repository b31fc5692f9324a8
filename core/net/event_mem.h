/*
 * event_mem.h -- libevent's memory (event_set_mem_functions), counted
 * against limits.buffer_memory, through a small per-thread cache of the
 * block sizes evbuffers use.
 *
 * Every request fills and empties a few evbuffers; libevent frees a chain
 * when it is drained and allocates a new one at the next read or write, and
 * its chains (4 KiB and up) are past glibc's per-thread cache: ~230
 * instructions a malloc/free pair, ~4 pairs a request.  From the cache: ~60.
 */
#ifndef MOXY_EVENT_MEM_H
#define MOXY_EVENT_MEM_H

#include <stddef.h>

/* Route libevent's allocations through the cache.  Once, at start, before
 * any other libevent call.  Builds with AddressSanitizer count plain malloc
 * blocks (a cache would hide a chain's use after free). */
void moxy_event_mem_init(void);

/* Give the calling thread's cached blocks back to malloc (also done when a
 * thread exits). */
void moxy_event_mem_release(void);

/* Bytes libevent's blocks hold now (every connection's buffers, chains
 * and events, all threads), exact to 64 KiB per thread.  Blocks the
 * per-thread cache keeps idle are not counted. */
size_t moxy_event_mem_held(void);

/* The budget moxy_event_mem_over compares with; 0: none.  Any thread. */
void moxy_event_mem_set_budget(size_t bytes);

/* 1 from when the bytes held pass the budget until they are back under 90 %
 * of it: each connection then keeps less ahead of its peer
 * (moxy_high_water).  One relaxed load. */
int moxy_event_mem_over(void);

#endif

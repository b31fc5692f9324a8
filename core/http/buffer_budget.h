/*
 * buffer_budget.h -- limits.buffer_memory: the bytes every connection's
 * buffers hold together (net/event_mem.h counts them), and what moxy does
 * when they pass it.
 *
 * Over the budget, each connection keeps at most MOXY_TIGHT_HIGH_WATER
 * ahead of its peer and reads MOXY_IO_READ_MIN at a time (http-t.h's
 * moxy_high_water, io.h's moxy_io_read_size): responses go at the pace of
 * their clients with less in memory, nothing is refused or cut.  Back
 * under 90 % of it, the usual watermarks return.  Each crossing is one log
 * line.
 */
#ifndef MOXY_BUFFER_BUDGET_H
#define MOXY_BUFFER_BUDGET_H

#include "http/http-t.h"

/* Once a second on every worker: the budget from w's configuration (so a
 * reload changes it), and a log line when the buffers crossed it since the
 * last tick of any worker. */
void moxy_buffer_budget_tick(moxy_worker_t *w);

/* Times the buffers went over the budget since start. */
unsigned long long moxy_buffer_budget_episodes(void);

/* The budget now, in bytes (0: none). */
size_t moxy_buffer_budget_limit(void);

#endif

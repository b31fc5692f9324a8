/*
 * counters.h -- named counters with labels that moxy's Lua modules
 * (moxy.ratelimit, moxy.acl, moxy.waf) and scripts (moxy.metrics) add to,
 * shown by /metrics.  Process-wide: every worker adds to the same ones.
 *
 * A counter is a name (a Prometheus metric name) and a label text (the
 * inside of the braces, already escaped: `rule="942100",action="block"`,
 * or empty).  At most MOXY_COUNTERS_MAX of them: past that, new ones are
 * refused and counted in moxy_counters_refused_total, so a script that
 * makes a label of every client address cannot grow memory without bound.
 * Lookups go through a keyed hash (base/siphash.h): names and labels may
 * come from requests.
 */
#ifndef MOXY_COUNTERS_H
#define MOXY_COUNTERS_H

#include <stddef.h>

#define MOXY_COUNTERS_MAX 4096
#define MOXY_COUNTER_TEXT_MAX 512 /* bytes of name + labels */

/* Call fn(arg, name, labels, help, value) for every counter, in the order
 * they were made (names together: the first of a name carries its help). */
void moxy_counters_each(void (*fn)(void *arg, const char *name, const char *labels, const char *help,
                                   double value),
                        void *arg);

/* Counters refused because the table was full. */
unsigned long long moxy_counters_refused(void);

/* BEGIN FFI lua/moxy/metrics.lua */
/* The id of the counter name{labels} (nlen and llen bytes; help, NUL-ended,
 * kept from the first call of a name), made at 0 when new.  -1: the name
 * or labels are not valid (a name is [a-zA-Z_:][a-zA-Z0-9_:]*, labels
 * `k="v",...` as /metrics prints them), or the table is full. */
int moxy_ffi_counter(const char *name, size_t nlen, const char *labels, size_t llen, const char *help);

/* Add by (>= 0) to counter id. */
void moxy_ffi_counter_add(int id, double by);

/* Counter id's value. */
double moxy_ffi_counter_get(int id);
/* END FFI */

#endif

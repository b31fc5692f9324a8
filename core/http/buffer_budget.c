/*
 * buffer_budget.c -- limits.buffer_memory's log lines and counts; see
 * buffer_budget.h.
 */
#include "http/buffer_budget.h"
#include "http/worker.h"
#include "base/log.h"

#include <stdatomic.h>

static atomic_int announced;                /* the state the log last said: 1 over */
static _Atomic long long over_since_ms;     /* when it went over */
static atomic_ullong episodes;
static _Atomic size_t limit;

static double mib(size_t n)
{
    return (double)n / (1024.0 * 1024.0);
}

void moxy_buffer_budget_tick(moxy_worker_t *w)
{
    size_t b = w->g->conf->limits.buffer_memory;
    atomic_store_explicit(&limit, b, memory_order_relaxed);
    moxy_event_mem_set_budget(b);
    int now = moxy_event_mem_over(), was = !now;
    /* one worker announces each crossing */
    if (!atomic_compare_exchange_strong(&announced, &was, now)) return;
    size_t held = moxy_event_mem_held();
    if (now) {
        atomic_store(&over_since_ms, moxy_mono_ms());
        atomic_fetch_add(&episodes, 1);
        moxy_log(MOXY_LOG_WARN, NULL,
                 "buffers hold %.1f MiB, over limits.buffer_memory (%.1f MiB): each connection now keeps at most "
                 "%d KiB ahead of its peer until they are under %.1f MiB",
                 mib(held), mib(b), MOXY_TIGHT_HIGH_WATER / 1024, mib(b - b / 10));
    } else {
        double took = (double)(moxy_mono_ms() - atomic_load(&over_since_ms)) / 1000.0;
        moxy_log(MOXY_LOG_WARN, NULL, "buffers hold %.1f MiB, under limits.buffer_memory (%.1f MiB) again after %.1f s",
                 mib(held), mib(b), took);
    }
}

unsigned long long moxy_buffer_budget_episodes(void)
{
    return atomic_load_explicit(&episodes, memory_order_relaxed);
}

size_t moxy_buffer_budget_limit(void)
{
    return atomic_load_explicit(&limit, memory_order_relaxed);
}

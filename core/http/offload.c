/*
 * offload.c -- the pool of threads behind moxy_offload (offload.h).
 *
 * One queue for the process (jobs in order, a mutex and a condition), one
 * list of finished jobs per worker (its own mutex) and an eventfd that
 * wakes the worker's loop to run their done.
 */
#include "http/offload.h"
#include "http/lifecycle.h"
#include "http/worker.h"
#include "base/log.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

typedef struct offload_job_s {
    STAILQ_ENTRY(offload_job_s) link;
    struct offload_worker_s *ow;
    void (*work)(void *arg);
    void (*done)(void *arg, int stopping);
    void *arg;
} offload_job_t;

STAILQ_HEAD(offload_jobs_s, offload_job_s);

/* A worker's side: its finished jobs and what wakes it. */
typedef struct offload_worker_s {
    pthread_mutex_t lock;
    struct offload_jobs_s finished;
    int pending; /* queued or running, not finished (the worker's thread reads it at the end) */
    int fd;      /* eventfd */
    struct event ev;
} offload_worker_t;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_idle = PTHREAD_COND_INITIALIZER; /* a job finished (for a worker's end) */
static struct offload_jobs_s queue = STAILQ_HEAD_INITIALIZER(queue);
static int queued, started;

static void *pool_main(void *unused)
{
    MOXY_UNUSED(unused);
    for (;;) {
        pthread_mutex_lock(&pool_lock);
        while (STAILQ_EMPTY(&queue)) pthread_cond_wait(&pool_cond, &pool_lock);
        offload_job_t *j = STAILQ_FIRST(&queue);
        STAILQ_REMOVE_HEAD(&queue, link);
        queued--;
        pthread_mutex_unlock(&pool_lock);

        j->work(j->arg);

        offload_worker_t *ow = j->ow;
        pthread_mutex_lock(&ow->lock);
        STAILQ_INSERT_TAIL(&ow->finished, j, link);
        ow->pending--;
        pthread_mutex_unlock(&ow->lock);
        uint64_t one = 1;
        if (write(ow->fd, &one, sizeof(one)) < 0) { /* the counter cannot overflow in practice */
        }
        pthread_mutex_lock(&pool_lock);
        pthread_cond_broadcast(&pool_idle);
        pthread_mutex_unlock(&pool_lock);
    }
    return NULL;
}

/* Run the done of ow's finished jobs (on its worker's thread; stopping:
 * the worker ends). */
static void run_finished(offload_worker_t *ow, int stopping)
{
    struct offload_jobs_s list;
    pthread_mutex_lock(&ow->lock);
    list = ow->finished;
    if (STAILQ_EMPTY(&list)) STAILQ_INIT(&list);
    else list.stqh_last = ow->finished.stqh_last;
    STAILQ_INIT(&ow->finished);
    pthread_mutex_unlock(&ow->lock);
    offload_job_t *j;
    while ((j = STAILQ_FIRST(&list))) {
        STAILQ_REMOVE_HEAD(&list, link);
        j->done(j->arg, stopping);
        free(j);
    }
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN) moxy_log_err("offload: %s", strerror(errno));
    run_finished(arg, 0);
}

static offload_worker_t *worker_side(moxy_worker_t *w)
{
    void **slot = moxy_worker_slot(w, &moxy_offload_module);
    if (*slot) return *slot;
    offload_worker_t *ow = calloc(1, sizeof(*ow));
    if (!ow) return NULL;
    ow->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ow->fd < 0) {
        free(ow);
        return NULL;
    }
    pthread_mutex_init(&ow->lock, NULL);
    STAILQ_INIT(&ow->finished);
    event_assign(&ow->ev, w->base, ow->fd, EV_READ | EV_PERSIST, wake_cb, ow);
    event_add(&ow->ev, NULL);
    *slot = ow;
    return ow;
}

int moxy_offload(moxy_worker_t *w, void (*work)(void *arg), void (*done)(void *arg, int stopping), void *arg)
{
    offload_worker_t *ow = worker_side(w);
    offload_job_t *j = ow ? calloc(1, sizeof(*j)) : NULL;
    if (!j) return MOXY_ERROR;
    j->ow = ow;
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&pool_lock);
    if (queued >= MOXY_OFFLOAD_QUEUE) {
        pthread_mutex_unlock(&pool_lock);
        free(j);
        return MOXY_ERROR;
    }
    while (started < MOXY_OFFLOAD_THREADS) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, pool_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        started++;
    }
    if (started == 0) {
        pthread_mutex_unlock(&pool_lock);
        free(j);
        return MOXY_ERROR;
    }
    pthread_mutex_lock(&ow->lock);
    ow->pending++;
    pthread_mutex_unlock(&ow->lock);
    STAILQ_INSERT_TAIL(&queue, j, link);
    queued++;
    pthread_cond_signal(&pool_cond);
    pthread_mutex_unlock(&pool_lock);
    return MOXY_OK;
}

static void offload_worker_free(moxy_worker_t *w)
{
    offload_worker_t *ow = *moxy_worker_slot(w, &moxy_offload_module);
    if (!ow) return;
    /* its jobs still queued or running: wait for them (a password check
     * takes milliseconds), then run every done */
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        pthread_mutex_lock(&ow->lock);
        int pending = ow->pending;
        pthread_mutex_unlock(&ow->lock);
        if (pending == 0) break;
        pthread_cond_wait(&pool_idle, &pool_lock);
    }
    pthread_mutex_unlock(&pool_lock);
    run_finished(ow, 1);
    event_del(&ow->ev);
    close(ow->fd);
    pthread_mutex_destroy(&ow->lock);
    free(ow);
    *moxy_worker_slot(w, &moxy_offload_module) = NULL;
}

moxy_module_t moxy_offload_module = {
    .name = "offload",
    .worker_free = offload_worker_free,
};

/*
 * generation.c -- loading generations and switching the workers to a new
 * one without dropping a request (see generation.h).
 *
 * A reload on the main thread:
 *   1. moxy_gen_load: configuration, pool state, dicts, scripts + init
 *      hooks, new listening sockets.  Errors go to a memory stream.
 *   2. PREPARE to every worker: each builds its VM for the new generation
 *      on its own thread (worker_init runs) and answers.
 *   3. All answered yes: COMMIT (each switches between requests); the main
 *      thread's services (health checks, resolver, admin) move to the new
 *      configuration.  Any no, or no answer within PREPARE_TIMEOUT: ABORT.
 *   4. The result goes to the log, the waiters (POST /reload), and the
 *      status file `moxy reload` reads.
 */
#include "http/lifecycle.h"
#include "ops/generation.h"
#include "ops/admin.h"
#include "cache/cache.h"
#include "api/geoip.h"
#include "proxy/health_check.h"
#include "base/log.h"
#include "net/tls.h"
#include "http/lua_bridge.h"
#include "proxy/resolver.h"
#include "base/sd_notify.h"
#include "base/shared_dict.h"
#include "ops/upgrade.h"
#include "proxy/upstream.h"
#include "ops/watch.h"
#include "ops/workers.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PREPARE_TIMEOUT 60.0 /* seconds the workers have to build their VMs */

/* --- generations --- */

void moxy_gen_hold(moxy_gen_t *g)
{
    atomic_fetch_add(&g->refs, 1);
}

void moxy_gen_release(moxy_gen_t *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    moxy_log(MOXY_LOG_DEBUG, NULL, "generation %u freed", g->id);
    for (int i = 0; g->listen_fds && i < g->conf->nlistens * g->nworkers; i++)
        if (g->listen_fds[i] >= 0) close(g->listen_fds[i]);
    free(g->listen_fds);
    for (int i = 0; g->tls && i < g->conf->nlistens; i++) moxy_tls_server_free(g->tls[i]);
    for (int i = 0; i < g->conf->nupstreams; i++) {
        if (g->conf->upstreams[i].tls_client) moxy_tls_client_free(g->conf->upstreams[i].tls_client);
        g->conf->upstreams[i].tls_client = NULL;
    }
    free(g->tls);
    moxy_conf_release(g->conf);
    free(g);
}

int moxy_gen_take_listen_fd(moxy_gen_t *g, int i, int worker)
{
    if (!g->listen_fds || worker < 0 || worker >= g->nworkers) return -1;
    int *slot = &g->listen_fds[i * g->nworkers + worker];
    int fd = *slot;
    *slot = -1;
    return fd;
}

/* A listening socket for lc (SO_REUSEPORT: one per worker, the kernel
 * spreads connections over them).  -1 after writing why to err. */
static int listen_socket(const moxy_conf_t *conf, const moxy_listen_conf_t *lc, FILE *err)
{
    int fd = socket(lc->addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) goto fail;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
    if (lc->addr.sa.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&lc->addr.sa, lc->addr.salen) < 0) goto fail;
    if (listen(fd, lc->backlog) < 0) goto fail;
    return fd;
fail:
    fprintf(err, "%s: listen %s: %s\n", conf->path, lc->addr.text, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}

/* 1 when cur listens on addr already. */
static int listening_on(const moxy_conf_t *cur, const moxy_addr_t *addr)
{
    for (int i = 0; cur && i < cur->nlistens; i++)
        if (moxy_addr_same(&cur->listens[i].addr, addr)) return 1;
    return 0;
}

int moxy_listen_probe(const moxy_addr_t *addr)
{
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, rc = 0;
    if (fd < 0) return 0; /* the real socket will say what is wrong */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)); /* TIME_WAIT is no one */
    if (addr->sa.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&addr->sa, addr->salen) != 0 && errno == EADDRINUSE) rc = EADDRINUSE;
    close(fd);
    return rc;
}

/* 1 when addr's port is this process's already: cur listens on it (a
 * reload from 127.0.0.1:80 to *:80 conflicts with itself until the switch)
 * or an upgrade handed a socket on it over (the old process listens there
 * until it drains).  Then no probe: it would find ourselves. */
static int port_ours(const moxy_conf_t *cur, const moxy_addr_t *addr)
{
    int port = moxy_addr_port(addr);
    for (int i = 0; cur && i < cur->nlistens; i++)
        if (moxy_addr_port(&cur->listens[i].addr) == port) return 1;
    return !cur && moxy_upgrade_inherits_port(port);
}

int moxy_gen_listen(moxy_gen_t *g, const moxy_gen_t *cur_gen, FILE *err)
{
    const moxy_conf_t *cur = cur_gen ? cur_gen->conf : NULL;
    const moxy_conf_t *conf = g->conf;
    /* SO_REUSEPORT lets a second moxy of the same user bind the same
     * address and take a share of its connections: first make sure nobody
     * listens on the new addresses (every one before binding any: two
     * listeners of this file may share a port) */
    for (int i = 0; i < conf->nlistens; i++) {
        const moxy_addr_t *a = &conf->listens[i].addr;
        if (listening_on(cur, a) || port_ours(cur, a) || moxy_listen_probe(a) != EADDRINUSE) continue;
        fprintf(err, "%s: address in use: %s (another process listens there; `ss -ltnp` names it)\n", conf->path,
                a->text);
        return MOXY_ERROR;
    }
    /* the admin listener (opened later, kept by reloads) likewise, but in
     * an upgrade, whose old process listens there until it drains */
    if (!cur && conf->admin.enabled && !moxy_upgrade_is_new() &&
        moxy_listen_probe(&conf->admin.addr) == EADDRINUSE) {
        fprintf(err, "%s: admin.listen: address in use: %s (another process listens there; `ss -ltnp` names it)\n",
                conf->path, conf->admin.addr.text);
        return MOXY_ERROR;
    }
    size_t n = (size_t)conf->nlistens * (size_t)g->nworkers;
    g->listen_fds = malloc((n + 1) * sizeof(int));
    if (!g->listen_fds) return MOXY_ERROR;
    for (size_t i = 0; i < n; i++) g->listen_fds[i] = -1;
    for (int i = 0; i < conf->nlistens; i++) {
        if (listening_on(cur, &conf->listens[i].addr)) continue;
        for (int k = 0; k < g->nworkers; k++) {
            int *fd = &g->listen_fds[i * g->nworkers + k];
            /* a binary upgrade's first generation adopts the old process's sockets */
            if (!cur && (*fd = moxy_upgrade_take(&conf->listens[i].addr)) >= 0) continue;
            if ((*fd = listen_socket(conf, &conf->listens[i], err)) < 0) return MOXY_ERROR;
        }
    }
    return MOXY_OK;
}

/* 1 when a and b name the same GeoIP databases. */
static int same_geoip(const moxy_conf_t *a, const moxy_conf_t *b)
{
    if (a->ngeoip != b->ngeoip) return 0;
    for (int i = 0; i < a->ngeoip; i++)
        if (strcmp(a->geoip[i].name, b->geoip[i].name) != 0 || strcmp(a->geoip[i].path, b->geoip[i].path) != 0)
            return 0;
    return 1;
}

/* What a reload cannot change in a running process: refused (geoip), or
 * kept as it was with a warning. */
static int reload_limits(const moxy_conf_t *cur, const moxy_conf_t *conf, FILE *err)
{
    if (!same_geoip(cur, conf)) {
        fprintf(err, "%s: geoip: the set of databases changed; a reload keeps the databases moxy started "
                     "with (their files are swapped when they change on disk): restart moxy to apply\n",
                conf->path);
        return MOXY_ERROR;
    }
    if (conf->workers != cur->workers)
        moxy_log_warn("reload: workers changed; the number of workers stays until moxy restarts");
    if (!moxy_str_same(conf->log.access, cur->log.access) || !moxy_str_same(conf->log.error, cur->log.error) ||
        conf->log.level != cur->log.level)
        moxy_log_warn("reload: log.access, log.error and log.level stay until moxy restarts");
    if (conf->admin.enabled != cur->admin.enabled || !moxy_str_same(conf->admin.addr.text, cur->admin.addr.text))
        moxy_log_warn("reload: admin.listen stays until moxy restarts (admin.token changes apply)");
    if (cur->cache.enabled && (conf->cache.size != cur->cache.size || conf->cache.max_object != cur->cache.max_object))
        moxy_log_warn("reload: cache.size and cache.max_object stay until moxy restarts (the cache keeps its objects)");
    if (cur->cache.enabled && !conf->cache.enabled)
        moxy_log_warn("reload: the cache stays on (with its objects) until moxy restarts");
    if (!moxy_str_same(conf->pid_file, cur->pid_file))
        moxy_log_warn("reload: pid_file stays until moxy restarts");
    for (int i = 0; i < conf->nshared; i++)
        for (int j = 0; j < cur->nshared; j++)
            if (strcmp(cur->shared[j].name, conf->shared[i].name) == 0 && cur->shared[j].size != conf->shared[i].size)
                moxy_log_warn("reload: shared.%s keeps its size and data until moxy restarts",
                              conf->shared[i].name);
    return MOXY_OK;
}

/* The TLS side of g's listeners that have one: certificates and keys
 * read and checked now, so that a bad one fails the load (or the reload,
 * the old generation serving on). */
static int tls_load(moxy_gen_t *g, FILE *err)
{
    moxy_conf_t *conf = g->conf;
    for (int i = 0; i < conf->nupstreams; i++) {
        moxy_upstream_conf_t *uc = &conf->upstreams[i];
        if (!uc->tls) continue;
        char where[600];
        snprintf(where, sizeof(where), "%s: upstreams.%s.tls", conf->path, uc->name);
        uc->tls_client = moxy_tls_client_new(uc->tls, where, err);
        if (!uc->tls_client) return MOXY_ERROR;
    }
    g->tls = calloc((size_t)conf->nlistens + 1, sizeof(*g->tls));
    if (!g->tls) {
        fprintf(err, "moxy: out of memory\n");
        return MOXY_ERROR;
    }
    for (int i = 0; i < conf->nlistens; i++) {
        const moxy_listen_conf_t *l = &conf->listens[i];
        if (!l->tls) continue;
        char keys[32];
        snprintf(keys, sizeof(keys), "listen[%d]", i + 1);
        g->tls[i] = moxy_tls_server_new(conf, l, keys, err);
        if (!g->tls[i]) return MOXY_ERROR;
        moxy_tls_server_check_expiry(g->tls[i], l->name);
        static int told; /* once per process: what TLS responses go through */
        if (!told++) {
            const char *why;
            int offload = moxy_tls_kernel_offload(&why);
            moxy_log(MOXY_LOG_INFO, NULL,
                     "TLS: responses, cache hits included, are encrypted by OpenSSL in moxy and copied to the "
                     "socket (no sendfile over TLS); kernel TLS offload: %s (%s)",
                     offload ? "offered by this kernel, not used" : "not offered by this kernel", why);
        }
    }
    return MOXY_OK;
}

moxy_gen_t *moxy_gen_load(const char *path, const moxy_gen_t *cur, int nworkers, FILE *err)
{
    moxy_conf_t *conf = moxy_conf_load(path, err);
    if (!conf) return NULL;
    moxy_gen_t *g = calloc(1, sizeof(*g));
    if (!g) {
        fprintf(err, "moxy: out of memory\n");
        moxy_conf_release(conf);
        return NULL;
    }
    g->conf = conf;
    atomic_store(&g->refs, 1);
    if (nworkers == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nworkers = conf->workers > 0 ? conf->workers : cpus > 0 ? (int)cpus : 1;
    }
    g->nworkers = nworkers > 0 ? nworkers : 0;
    g->id = cur ? cur->id + 1 : 1;
    const moxy_conf_t *cc = cur ? cur->conf : NULL;
    if (cc && reload_limits(cc, conf, err) != MOXY_OK) goto err;
    if (tls_load(g, err) != MOXY_OK) goto err;
    if (moxy_upstreams_create(conf, cc) != MOXY_OK) {
        fprintf(err, "moxy: out of memory\n");
        goto err;
    }
    if (!cc && moxy_geoip_open_all(conf, err) != MOXY_OK) goto err;
    /* moxy.shared dicts: init hooks and workers may use them (kept by name) */
    if (moxy_shdict_create_all(conf, err) != MOXY_OK) goto err;
    /* the HTTP cache: made once, kept by reloads */
    if (conf->cache.enabled && nworkers >= 0 && moxy_cache_create(conf->cache.size, conf->cache.max_object) != MOXY_OK) {
        fprintf(err, "moxy: out of memory for the cache\n");
        goto err;
    }
    if (moxy_lua_check_scripts(conf, err) != MOXY_OK) goto err;
    if (cur && moxy_gen_listen(g, cur, err) != MOXY_OK) goto err;
    return g;
err:
    moxy_gen_release(g);
    return NULL;
}

/* --- reloads --- */

typedef struct waiter_s {
    struct waiter_s *next;
    moxy_reload_cb cb;
    void *arg;
} waiter_t;

static struct {
    struct event_base *base;
    moxy_worker_t **workers;
    int n;
    char *path, *status_path;
    char *abs_path;           /* path made absolute (symbolic links kept): what the status file names */
    moxy_gen_t *current;
    moxy_gen_t *next;         /* being prepared by the workers */
    int running;
    waiter_t *waiting;        /* the running reload's */
    waiter_t *queued;         /* the next one's */
    int efd;                  /* workers' answers */
    struct event *answer_ev, *timeout_ev, *again_ev;
    long long started_us;
    moxy_reload_status_t st;
} rl = {.efd = -1};

moxy_gen_t *moxy_gen_current(void)
{
    return rl.current;
}

int moxy_reload_running(void)
{
    return rl.running;
}

const moxy_reload_status_t *moxy_reload_status(void)
{
    return &rl.st;
}

int moxy_file_replace(const char *path, const char *text)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return MOXY_ERROR;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) return MOXY_ERROR;
    int ok = fputs(text, f) >= 0;
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

/* Write the status file `moxy reload` waits for: "seq ok|failed generation
 * pid path\nmessage\n" (path: the configuration this process reloads). */
static void write_status(void)
{
    if (!rl.status_path) return;
    char text[sizeof(rl.st.message) + 4200];
    snprintf(text, sizeof(text), "%u %s %u %ld %s\n%s\n", rl.st.seq, rl.st.ok ? "ok" : "failed", rl.st.generation,
             (long)getpid(), rl.abs_path, rl.st.message);
    if (moxy_file_replace(rl.status_path, text) != MOXY_OK)
        moxy_log_err("reload: cannot write %s: %s", rl.status_path, strerror(errno));
}

static void start(void);

static void again_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    if (!rl.running && rl.queued) start();
}

/* The reload is over: record, log, tell the waiters; the next one starts. */
static void finish(int ok, const char *msg)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    rl.st.seq++;
    rl.st.ok = ok;
    rl.st.generation = rl.current ? rl.current->id : 0;
    rl.st.at = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    rl.st.took = (double)(moxy_mono_us() - rl.started_us) / 1e6;
    snprintf(rl.st.message, sizeof(rl.st.message), "%s", msg);
    size_t len = strlen(rl.st.message);
    while (len > 0 && rl.st.message[len - 1] == '\n') rl.st.message[--len] = '\0';
    if (ok) {
        rl.st.reloads++;
        moxy_log_info("reload: %s (%.3f s)", rl.st.message, rl.st.took);
    } else {
        rl.st.failures++;
        moxy_log_err("reload failed, generation %u keeps serving: %s", rl.st.generation, rl.st.message);
    }
    write_status();
    moxy_sd_notifyf("READY=1\nSTATUS=serving generation %u%s", rl.st.generation,
                    ok ? "" : " (the last reload failed)");
    waiter_t *w = rl.waiting;
    rl.waiting = NULL;
    rl.running = 0;
    if (rl.timeout_ev) event_del(rl.timeout_ev);
    while (w) {
        waiter_t *next = w->next;
        if (w->cb) w->cb(&rl.st, w->arg);
        free(w);
        w = next;
    }
    if (rl.queued) event_active(rl.again_ev, EV_TIMEOUT, 0);
}

/* Every worker answered PREPARE (or the time is up): commit or abort. */
static void decide(int timed_out)
{
    int ok = !timed_out;
    char msg[sizeof(rl.st.message)] = "";
    size_t o = 0;
    for (int i = 0; i < rl.n; i++) {
        moxy_worker_t *w = rl.workers[i];
        int r = atomic_load(&w->prepare_result);
        if (r == 1) continue;
        ok = 0;
        /* one line per distinct error: the workers usually agree */
        const char *why = r == 0 ? "no answer in time" : w->error;
        if (!strstr(msg, why) && o < sizeof(msg) - 2)
            o += (size_t)snprintf(msg + o, sizeof(msg) - o, "%sworker %d: %s", o ? "\n" : "", w->id, why);
    }
    moxy_gen_t *g = rl.next;
    rl.next = NULL;
    if (!ok) {
        for (int i = 0; i < rl.n; i++) moxy_worker_signal(rl.workers[i], MOXY_WORKER_ABORT);
        moxy_gen_release(g);
        finish(0, msg);
        return;
    }
    for (int i = 0; i < rl.n; i++) moxy_worker_signal(rl.workers[i], MOXY_WORKER_COMMIT);
    moxy_gen_t *old = rl.current;
    rl.current = g;
    moxy_modules_reload(g->conf, rl.base); /* the main thread's services follow it */
    moxy_gen_release(old);
    snprintf(msg, sizeof(msg), "generation %u serving (configuration %s)", g->id, g->conf->path);
    finish(1, msg);
}

static void answer_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) return;
    if (!rl.next) return;
    for (int i = 0; i < rl.n; i++)
        if (atomic_load(&rl.workers[i]->prepare_result) == 0) return;
    decide(0);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    if (rl.next) decide(1);
}

void moxy_reload_worker_prepared(void)
{
    uint64_t one = 1;
    if (write(rl.efd, &one, sizeof(one)) < 0) abort(); /* cannot happen with an eventfd */
}

static void start(void)
{
    rl.running = 1;
    rl.waiting = rl.queued;
    rl.queued = NULL;
    rl.started_us = moxy_mono_us();
    moxy_log_info("reload: loading %s", rl.path);
    char *buf = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&buf, &len);
    moxy_gen_t *g = err ? moxy_gen_load(rl.path, rl.current, rl.n, err) : NULL;
    if (err) fclose(err);
    if (!g) {
        finish(0, buf && *buf ? buf : "out of memory");
        free(buf);
        return;
    }
    free(buf);
    rl.next = g;
    for (int i = 0; i < rl.n; i++) {
        moxy_worker_t *w = rl.workers[i];
        atomic_store(&w->prepare_result, 0);
        moxy_gen_hold(g);
        moxy_gen_t *prev = atomic_exchange(&w->pending, g);
        if (prev) moxy_gen_release(prev);
        moxy_worker_signal(w, MOXY_WORKER_PREPARE);
    }
    struct timeval tv = moxy_timeval(PREPARE_TIMEOUT);
    event_add(rl.timeout_ev, &tv);
}

void moxy_reload(moxy_reload_cb cb, void *arg)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w) {
        w->cb = cb;
        w->arg = arg;
        w->next = rl.queued;
        rl.queued = w;
    }
    if (!rl.running) start();
}

int moxy_reload_init(struct event_base *base, moxy_worker_t **workers, int n, const char *path,
                     moxy_gen_t *first, const char *status_path)
{
    rl.base = base;
    rl.workers = workers;
    rl.n = n;
    rl.path = strdup(path);
    rl.status_path = status_path ? strdup(status_path) : NULL;
    char cwd[4096];
    if (path[0] == '/' || !getcwd(cwd, sizeof(cwd))) rl.abs_path = strdup(path);
    else if ((rl.abs_path = malloc(strlen(cwd) + strlen(path) + 2))) sprintf(rl.abs_path, "%s/%s", cwd, path);
    rl.st.generation = first->id;
    snprintf(rl.st.message, sizeof(rl.st.message), "generation %u serving (configuration %s)", first->id,
             first->conf->path);
    rl.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!rl.path || !rl.abs_path || rl.efd < 0) return MOXY_ERROR;
    rl.answer_ev = event_new(base, rl.efd, EV_READ | EV_PERSIST, answer_cb, NULL);
    rl.timeout_ev = evtimer_new(base, timeout_cb, NULL);
    rl.again_ev = evtimer_new(base, again_cb, NULL);
    if (!rl.answer_ev || !rl.timeout_ev || !rl.again_ev || event_add(rl.answer_ev, NULL) != 0) return MOXY_ERROR;
    write_status(); /* seq 0: `moxy reload` finds the configuration, and waits for a seq above */
    rl.current = first;
    return MOXY_OK;
}

void moxy_reload_shutdown(void)
{
    if (rl.next) moxy_gen_release(rl.next);
    rl.next = NULL;
    for (waiter_t **list = &rl.waiting; list; list = list == &rl.waiting ? &rl.queued : NULL) {
        while (*list) {
            waiter_t *w = *list;
            *list = w->next;
            free(w);
        }
    }
    if (rl.answer_ev) event_free(rl.answer_ev);
    if (rl.timeout_ev) event_free(rl.timeout_ev);
    if (rl.again_ev) event_free(rl.again_ev);
    rl.answer_ev = rl.timeout_ev = rl.again_ev = NULL;
    if (rl.efd >= 0) close(rl.efd);
    rl.efd = -1;
    if (rl.status_path) {
        /* not when an upgrade's new process wrote it since */
        char text[128];
        long pid = 0;
        FILE *f = fopen(rl.status_path, "r");
        if (f && fgets(text, sizeof(text), f) && sscanf(text, "%*u %*s %*u %ld", &pid) == 1 && pid == (long)getpid())
            unlink(rl.status_path);
        if (f) fclose(f);
    }
    moxy_gen_release(rl.current);
    rl.current = NULL;
    free(rl.path);
    free(rl.status_path);
    free(rl.abs_path);
    rl.path = rl.status_path = rl.abs_path = NULL;
}

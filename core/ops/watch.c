/*
 * watch.c -- reloading when watched files change (see watch.h).
 */
#include "http/lifecycle.h"
#include "ops/watch.h"
#include "ops/generation.h"
#include "base/log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>

#define DIR_EVENTS (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB)

/* A watched file: the directory watch it belongs to and its name there. */
typedef struct {
    int wd;
    char *path;       /* as watched, for the log */
    const char *name; /* in path: the part after its last '/' */
} watched_t;

static struct {
    int fd;
    struct event *ev, *debounce;
    watched_t *files;
    int nfiles;
    char changed[PATH_MAX]; /* the first file that changed since the last reload */
} w = {.fd = -1};

static void forget(void)
{
    for (int i = 0; i < w.nfiles; i++) {
        int seen = 0; /* a directory's watch is removed once */
        for (int j = 0; j < i; j++) seen |= w.files[j].wd == w.files[i].wd;
        if (!seen && w.files[i].wd >= 0) inotify_rm_watch(w.fd, w.files[i].wd);
        free(w.files[i].path);
    }
    free(w.files);
    w.files = NULL;
    w.nfiles = 0;
}

static void debounce_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    moxy_log_info("watch: %s changed; reloading", w.changed);
    w.changed[0] = '\0';
    moxy_reload(NULL, NULL);
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) snprintf(w.changed, sizeof(w.changed), "(many files)");
            for (int i = 0; ev->len && i < w.nfiles; i++) {
                if (w.files[i].wd != ev->wd || strcmp(w.files[i].name, ev->name) != 0) continue;
                if (!w.changed[0]) snprintf(w.changed, sizeof(w.changed), "%s", w.files[i].path);
                break;
            }
        }
    }
    if (w.changed[0]) {
        struct timeval tv = {0, MOXY_WATCH_DEBOUNCE_MS * 1000};
        evtimer_add(w.debounce, &tv);
    }
}

/* Watch path (relative to dir unless absolute). */
static int add(const char *dir, const char *path)
{
    char full[PATH_MAX], parent[PATH_MAX];
    if (path[0] == '/' || !dir) snprintf(full, sizeof(full), "%s", path);
    else snprintf(full, sizeof(full), "%s/%s", dir, path);
    for (int i = 0; i < w.nfiles; i++)
        if (strcmp(w.files[i].path, full) == 0) return MOXY_OK;
    const char *slash = strrchr(full, '/');
    if (slash) snprintf(parent, sizeof(parent), "%.*s", (int)(slash - full) ? (int)(slash - full) : 1, full);
    else snprintf(parent, sizeof(parent), ".");
    int wd = inotify_add_watch(w.fd, parent, DIR_EVENTS);
    if (wd < 0) {
        moxy_log_warn("watch: cannot watch %s (%s): its changes will not reload", full, strerror(errno));
        return MOXY_OK;
    }
    watched_t *n = realloc(w.files, (size_t)(w.nfiles + 1) * sizeof(*n));
    if (!n) return MOXY_ERROR;
    w.files = n;
    watched_t *f = &n[w.nfiles];
    f->wd = wd;
    if (!(f->path = strdup(full))) return MOXY_ERROR;
    f->name = slash ? f->path + (slash + 1 - full) : f->path;
    w.nfiles++;
    return MOXY_OK;
}

int moxy_watch_set(const moxy_conf_t *conf, struct event_base *base)
{
    forget();
    if (!conf->watch) return MOXY_OK;
    if (w.fd < 0) {
        w.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w.fd < 0) {
            moxy_log_err("watch: inotify: %s; files are not watched", strerror(errno));
            return MOXY_ERROR;
        }
        w.ev = event_new(base, w.fd, EV_READ | EV_PERSIST, inotify_cb, NULL);
        w.debounce = evtimer_new(base, debounce_cb, NULL);
        if (!w.ev || !w.debounce || event_add(w.ev, NULL) != 0) {
            moxy_log_err("watch: out of memory; files are not watched");
            moxy_watch_stop();
            return MOXY_ERROR;
        }
    }
    int rc = add(NULL, conf->path);
    for (int i = 0; rc == MOXY_OK && i < conf->nscripts; i++)
        if (!conf->scripts_src || !conf->scripts_src[i]) rc = add(NULL, conf->scripts[i]); /* made by moxy: no file */
    for (int i = 0; rc == MOXY_OK && i < conf->nwatched; i++) rc = add(conf->dir, conf->watched[i]);
    if (rc != MOXY_OK) moxy_log_err("watch: out of memory; some files are not watched");
    moxy_log(MOXY_LOG_DEBUG, NULL, "watch: %d file%s", w.nfiles, w.nfiles == 1 ? "" : "s");
    return rc;
}

void moxy_watch_stop(void)
{
    forget();
    if (w.ev) event_free(w.ev);
    if (w.debounce) event_free(w.debounce);
    w.ev = w.debounce = NULL;
    if (w.fd >= 0) close(w.fd);
    w.fd = -1;
}

static int watch_reload(moxy_conf_t *conf, struct event_base *base)
{
    return moxy_watch_set(conf, base);
}

moxy_module_t moxy_watch_module = {
    .name = "watch",
    .reload = watch_reload,
};

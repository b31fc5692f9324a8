/*
 * main.c -- command line, signals, and the worker threads' start and end.
 *
 *   moxy [-c FILE]        run (default FILE: moxy.lua)
 *   moxy -t [-c FILE]     check the configuration and its scripts, then exit
 *   moxy -v               version of moxy and of the libraries it runs on
 */
#include "admin.h"
#include "config.h"
#include "geoip.h"
#include "health_check.h"
#include "http.h"
#include "log.h"
#include "lua_bridge.h"
#include "resolver.h"
#include "sd_notify.h"
#include "shared_dict.h"
#include "upstream.h"
#include "worker.h"

#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <luajit.h>
#include <maxminddb.h>
#include <openssl/crypto.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

int moxy_test_main(int argc, char **argv); /* test_runner.c */

static moxy_worker_t **workers;
static int nworkers;
static struct event_base *main_base;
static struct event *exit_ev;
static int exit_fd = -1; /* eventfd: workers tell the main thread they ended */
static atomic_int workers_exited;

static void usage(FILE *f)
{
    fprintf(f, "usage: moxy [-c FILE] [-t] [-v]\n"
               "       moxy test [busted options] [spec paths...]\n"
               "  -c FILE  configuration file (default: moxy.lua)\n"
               "  -t       check the configuration and scripts, then exit\n"
               "  -v       print versions and exit\n");
}

static void print_versions(void)
{
    printf("moxy %s\n", MOXY_VERSION);
    printf("%s\n", LUAJIT_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("zlib %s\n", zlibVersion());
    printf("libmaxminddb %s\n", MMDB_lib_version());
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
    /* also links libpcre2-8 for moxy.re, whose FFI finds it through ffi.C */
    char pcre2[64];
    if (pcre2_config(PCRE2_CONFIG_VERSION, pcre2) > 0) printf("PCRE2 %s\n", pcre2);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    switch (sig) {
    case SIGQUIT:
        moxy_log_info("QUIT: draining: no new connections, in-flight requests finish");
        moxy_sd_notify("STOPPING=1\nSTATUS=draining: in-flight requests finish");
        for (int i = 0; i < nworkers; i++) moxy_worker_signal(workers[i], MOXY_WORKER_DRAIN);
        break;
    case SIGTERM:
    case SIGINT:
        moxy_log_info("%s: exiting now", sig == SIGTERM ? "TERM" : "INT");
        moxy_sd_notify("STOPPING=1\nSTATUS=exiting now");
        for (int i = 0; i < nworkers; i++) moxy_worker_signal(workers[i], MOXY_WORKER_STOP);
        break;
    case SIGUSR1:
        moxy_log_info("USR1: reopening log files");
        moxy_log_reopen();
        break;
    case SIGHUP:
        moxy_log_warn("HUP: configuration reload is not available in this version; restart moxy "
                      "to apply changes");
        break;
    }
}

static void worker_exit_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) return;
    if (atomic_load(&workers_exited) >= nworkers) event_base_loopbreak(main_base);
}

void moxy_main_worker_exited(void)
{
    uint64_t one = 1;
    atomic_fetch_add(&workers_exited, 1);
    if (write(exit_fd, &one, sizeof(one)) < 0) abort(); /* cannot happen with an eventfd */
}

static int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "test") == 0) return moxy_test_main(argc - 1, argv + 1);
    const char *path = "moxy.lua";
    int check = 0, opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': check = 1; break;
        case 'v': print_versions(); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    moxy_conf_t *conf = moxy_conf_load(path);
    if (!conf) return 1;
    if (moxy_upstreams_create(conf) != MOXY_OK) {
        fprintf(stderr, "moxy: out of memory\n");
        moxy_conf_free(conf);
        return 1;
    }
    if (moxy_geoip_open_all(conf) != MOXY_OK) {
        moxy_geoip_close_all();
        moxy_conf_free(conf);
        return 1;
    }
    /* moxy.shared dicts: init hooks (moxy -t runs them too) and workers may use them */
    if (moxy_shdict_create_all(conf) != MOXY_OK) {
        moxy_geoip_close_all();
        moxy_conf_free(conf);
        return 1;
    }
    if (check) {
        int rc = moxy_lua_check_scripts(conf);
        if (rc == MOXY_OK) printf("moxy: configuration %s ok\n", path);
        moxy_geoip_close_all();
        moxy_conf_free(conf);
        return rc == MOXY_OK ? 0 : 1;
    }

    int status = 1;
    /* init hooks: once per configuration, before any worker; an error stops here */
    if (moxy_lua_check_scripts(conf) != MOXY_OK) goto out;

    if (moxy_log_open_error(conf->log.error, conf->log.level) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot open error log %s: %s\n", conf->log.error, strerror(errno));
        goto out;
    }
    if (moxy_log_open_access(conf->log.access) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot open access log %s: %s\n", conf->log.access, strerror(errno));
        goto out;
    }

    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    moxy_http_init();
    moxy_upstream_http_init();

    main_base = event_base_new();
    exit_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (main_base && exit_fd >= 0)
        exit_ev = event_new(main_base, exit_fd, EV_READ | EV_PERSIST, worker_exit_cb, NULL);
    if (!exit_ev || event_add(exit_ev, NULL) != 0) {
        fprintf(stderr, "moxy: cannot set up the main loop: %s\n", strerror(errno));
        goto out;
    }
    /* upstream names: resolved on the main loop; the first answers before any worker */
    if (moxy_resolver_start(conf, main_base) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot start resolving upstream names\n");
        goto out;
    }
    moxy_resolver_wait(main_base, conf->resolver.timeout);
    if (moxy_geoip_watch_start(main_base) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot watch the GeoIP databases\n");
        goto out;
    }
    if (moxy_health_start(conf, main_base) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot start the health checks\n");
        goto out;
    }

    nworkers = conf->workers > 0 ? conf->workers : cpu_count();
    workers = calloc((size_t)nworkers, sizeof(*workers));
    if (!workers) goto out;
    for (int i = 0; i < nworkers; i++) {
        workers[i] = moxy_worker_new(conf, i);
        if (!workers[i]) {
            fprintf(stderr, "moxy: out of memory\n");
            goto out;
        }
        if (workers[i]->error[0]) {
            fprintf(stderr, "moxy: %s\n", workers[i]->error);
            goto out;
        }
    }

    /* Workers inherit a mask that blocks the signals the main thread handles. */
    sigset_t set, old;
    sigemptyset(&set);
    int sigs[] = {SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGHUP};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(sigs); i++) sigaddset(&set, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    if (moxy_lua_watchdog_start(workers, nworkers) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot start the CPU budget's watchdog: %s\n", strerror(errno));
        goto out;
    }
    for (int i = 0; i < nworkers; i++) {
        if (moxy_worker_start(workers[i]) != MOXY_OK) {
            fprintf(stderr, "moxy: cannot start worker %d: %s\n", i, strerror(errno));
            for (int j = 0; j < i; j++) moxy_worker_signal(workers[j], MOXY_WORKER_STOP);
            goto out; /* joins the started ones */
        }
    }
    struct event *sev[MOXY_ARRAY_LEN(sigs)];
    for (size_t i = 0; i < MOXY_ARRAY_LEN(sigs); i++) {
        sev[i] = evsignal_new(main_base, sigs[i], signal_cb, NULL);
        event_add(sev[i], NULL);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (moxy_admin_start(conf, main_base, workers, nworkers) != MOXY_OK) {
        for (int i = 0; i < nworkers; i++) moxy_worker_signal(workers[i], MOXY_WORKER_STOP);
        goto out;
    }
    for (int i = 0; i < conf->nlistens; i++)
        moxy_log_info("listening on %s (%s)", conf->listens[i].addr.text, conf->listens[i].name);
    moxy_log_info("moxy %s started: %d worker%s, configuration %s", MOXY_VERSION, nworkers,
                  nworkers == 1 ? "" : "s", path);
    /* listeners opened and worker_init run in moxy_worker_new: connections queue until accepted */
    moxy_sd_notifyf("READY=1\nMAINPID=%ld\nSTATUS=serving: %d worker%s, configuration %s",
                    (long)getpid(), nworkers, nworkers == 1 ? "" : "s", path);

    event_base_loop(main_base, EVLOOP_NO_EXIT_ON_EMPTY);
    for (size_t i = 0; i < MOXY_ARRAY_LEN(sigs); i++) event_free(sev[i]);
    moxy_log_info("exited");
    status = 0;

out:
    moxy_admin_stop();
    moxy_lua_watchdog_stop();
    for (int i = 0; workers && i < nworkers; i++) moxy_worker_join_free(workers[i]);
    free(workers);
    if (exit_ev) event_free(exit_ev);
    if (exit_fd >= 0) close(exit_fd);
    moxy_health_stop();
    moxy_resolver_stop();
    moxy_geoip_close_all();
    if (main_base) event_base_free(main_base);
    moxy_log_close();
    moxy_conf_free(conf);
    libevent_global_shutdown();
    return status;
}

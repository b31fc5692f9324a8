/*
 * main.c -- command line, signals, and the worker threads' start and end.
 *
 *   moxy [-c FILE]        run (default FILE: moxy.lua)
 *   moxy -t [-c FILE]     check the configuration and its scripts, then exit
 *   moxy -v, --version    version of moxy and of the libraries it runs on
 *   moxy -h, --help       usage
 *   moxy reload [-c FILE] [-p PIDFILE]
 *                         ask the running moxy (its pid_file) to reload the
 *                         file it runs (FILE must be that one); prints the
 *                         result, exits 1 when the reload failed
 *   -p PIDFILE            overrides the configuration's pid_file
 */
#include "ops/modules.h"
#include "api/fleet.h"
#include "ops/admin.h"
#include "cache/cache.h"
#include "base/config.h"
#include "ops/generation.h"
#include "api/geoip.h"
#include "net/event_mem.h"
#include "proxy/health_check.h"
#include "http/http.h"
#include "http/request.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "base/pidfile.h"
#include "proxy/resolver.h"
#include "base/sd_notify.h"
#include "base/shared_dict.h"
#include "ops/upgrade.h"
#include "proxy/upstream.h"
#include "ops/watch.h"
#include "ops/workers.h"

#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <luajit.h>
#include <limits.h>
#include <malloc.h>
#include <maxminddb.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

int moxy_test_main(int argc, char **argv); /* test_runner.c */

static moxy_worker_t **workers;
static int nworkers;
static struct event_base *main_base;
static struct event *exit_ev;
static int exit_fd = -1; /* eventfd: workers tell the main thread they ended */
static atomic_int workers_exited;

static const struct option long_options[] = {
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moxy [-c FILE] [-p PIDFILE] [-t]\n"
               "       moxy reload [-c FILE] [-p PIDFILE]\n"
               "       moxy test [busted options] [spec paths...]\n"
               "       moxy -v | --version\n"
               "       moxy -h | --help\n"
               "  -c FILE    configuration file (default: moxy.lua)\n"
               "  -p FILE    PID file (default: pid_file of the configuration)\n"
               "  -t         check the configuration and scripts, then exit\n"
               "  -v         print the versions of moxy and of its libraries, then exit\n"
               "  -h         print this help, then exit\n"
               "  reload     ask the moxy running FILE (found by its pid_file) to reload it\n"
               "  test       run busted specs inside moxy's runtime (moxy.test)\n"
               "man moxy (man/moxy.8) and README.md tell the rest.\n");
}

/* moxy -v: moxy's version, then those of the libraries it uses. */
static void print_versions(void)
{
    printf("moxy %s\n", MOXY_VERSION);
    printf("%s\n", LUAJIT_VERSION);
    printf("libevent %s\n", event_get_version());
    printf("libmaxminddb %s\n", MMDB_lib_version());
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
    printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("libnghttp2 %s\n", nghttp2_version(0)->version_str);
    /* also links libpcre2-8 for moxy.re, whose FFI finds it through ffi.C */
    char pcre2[64];
    if (pcre2_config(PCRE2_CONFIG_VERSION, pcre2) > 0) printf("PCRE2 %s\n", pcre2);
    uint32_t br = BrotliEncoderVersion();
    printf("zlib %s\nbrotli %u.%u.%u\nzstd %s\n", zlibVersion(), br >> 24, (br >> 12) & 0xfff, br & 0xfff,
           ZSTD_versionString());
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
        if (moxy_upgrade_handing_over()) {
            /* the new process serves and is the service's main process now */
            moxy_log_info("QUIT: the new moxy took over; draining: in-flight requests finish");
        } else {
            moxy_log_info("QUIT: draining: no new connections, in-flight requests finish");
            moxy_sd_notify("STOPPING=1\nSTATUS=draining: in-flight requests finish");
        }
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
    case SIGUSR2:
        moxy_upgrade_start(main_base, workers, nworkers);
        break;
    case SIGHUP:
        moxy_log_info("HUP: reloading the configuration");
        moxy_reload(NULL, NULL);
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

/* The status file of reloads beside the PID file. */
static void status_path_of(const char *pid_file, char *out, size_t len)
{
    snprintf(out, len, "%s.reload", pid_file);
}

/* The reload status file (generation.c's write_status), parsed. */
typedef struct {
    unsigned seq;    /* 0: no file, or no reload yet */
    int ok;          /* the last reload succeeded */
    long pid;        /* who wrote it, 0: unknown */
    char conf[4096]; /* the configuration it reloads (absolute), "": unknown */
    const char *msg; /* the message lines, in text */
    char text[8192];
} status_t;

static void status_read(const char *path, status_t *st)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(st->text, 1, sizeof(st->text) - 1, f) : 0;
    if (f) fclose(f);
    st->text[n] = '\0';
    st->seq = 0;
    st->ok = 0;
    st->pid = 0;
    st->conf[0] = '\0';
    char *nl = strchr(st->text, '\n');
    st->msg = nl ? nl + 1 : "";
    char verdict[16];
    unsigned gen;
    int at = 0;
    int k = sscanf(st->text, "%u %15s %u %ld %n", &st->seq, verdict, &gen, &st->pid, &at);
    if (k < 1) st->seq = 0;
    if (k >= 2) st->ok = strcmp(verdict, "ok") == 0;
    if (k >= 4 && at > 0 && nl && st->text + at < nl)
        snprintf(st->conf, sizeof(st->conf), "%.*s", (int)(nl - (st->text + at)), st->text + at);
}

/* 1 when path (as this command was given it) names the file conf (the
 * running moxy's, absolute): the same name, or the same file now. */
static int same_conf(const char *path, const char *conf)
{
    char abs[8192], cwd[4096], a[PATH_MAX], b[PATH_MAX];
    if (path[0] == '/' || !getcwd(cwd, sizeof(cwd))) snprintf(abs, sizeof(abs), "%s", path);
    else snprintf(abs, sizeof(abs), "%s/%s", cwd, path);
    if (strcmp(abs, conf) == 0) return 1;
    return realpath(path, a) && realpath(conf, b) && strcmp(a, b) == 0;
}

/* moxy reload [-c FILE]: signal the running moxy and wait for its verdict. */
static int reload_main(int argc, char **argv)
{
    const char *path = "moxy.lua", *pid_opt = NULL;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:p:h", long_options, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'p': pid_opt = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V': print_versions(); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    moxy_conf_t *conf = moxy_conf_load(path, stderr);
    if (!conf) {
        fprintf(stderr, "moxy reload: %s has errors; the running moxy was not asked to reload\n", path);
        return 1;
    }
    const char *pid_file = pid_opt ? pid_opt : conf->pid_file;
    if (!pid_file) {
        fprintf(stderr, "moxy reload: %s sets pid_file = false and no -p was given: no running moxy to find\n", path);
        moxy_conf_release(conf);
        return 1;
    }
    char status[4096], why[160];
    status_t *st = malloc(sizeof(*st));
    if (!st) {
        fprintf(stderr, "moxy reload: out of memory\n");
        moxy_conf_release(conf);
        return 1;
    }
    status_path_of(pid_file, status, sizeof(status));
    long pid = moxy_pidfile_owner(pid_file, why, sizeof(why));
    int rc = 1;
    if (pid <= 0 || kill((pid_t)pid, 0) != 0) {
        fprintf(stderr, "moxy reload: no running moxy (pid_file %s: %s)\n", pid_file,
                pid <= 0 ? why : strerror(errno));
        goto out;
    }
    status_read(status, st);
    unsigned before = st->seq;
    /* the running moxy reloads the file it runs, whatever -c says: a
     * reload "from" another file would report that one's fate for the
     * other's.  (Unknown when it predates this check: then no check.) */
    if (st->conf[0] && st->pid == pid && !same_conf(path, st->conf)) {
        fprintf(stderr, "moxy reload: the running moxy (pid %ld) runs %s, not %s: a reload reads the running "
                        "configuration's file again. Edit that file and run `moxy reload -c %s`, or restart moxy "
                        "with -c %s to run another file\n", pid, st->conf, path, st->conf, path);
        goto out;
    }
    if (kill((pid_t)pid, SIGHUP) != 0) {
        fprintf(stderr, "moxy reload: cannot signal pid %ld: %s\n", pid, strerror(errno));
        goto out;
    }
    /* the reload's result appears in the status file (bounded wait: a
     * reload gives up on its workers after a minute) */
    for (int i = 0; i < 90 * 50; i++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        status_read(status, st);
        if (st->seq == 0 || st->seq == before) {
            if (kill((pid_t)pid, 0) != 0) break;
            continue;
        }
        printf("moxy reload: %s\n", st->ok ? "ok" : "failed; the running configuration keeps serving");
        fputs(st->msg, st->ok ? stdout : stderr);
        rc = st->ok ? 0 : 1;
        goto out;
    }
    fprintf(stderr, "moxy reload: no answer from pid %ld\n", pid);
out:
    moxy_conf_release(conf);
    free(st);
    return rc;
}

/* Freed memory stays with the process up to 64 MiB per arena (a worker's
 * is its own), and blocks up to 4 MiB come from the heap, not mmap: glibc's
 * defaults give a worker's freed body buffers back to the kernel at once
 * (madvise), and every response that follows faults its pages in again
 * (3.5x the CPU per 64 KiB HTTP/2 response, measured).  GLIBC_TUNABLES'
 * malloc settings win. */
static void malloc_tune(void)
{
    const char *t = getenv("GLIBC_TUNABLES");
    if (t && strstr(t, "glibc.malloc.")) return;
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
}

int main(int argc, char **argv)
{
    malloc_tune();
    moxy_event_mem_init();
    moxy_modules_setup();
    if (argc >= 2 && strcmp(argv[1], "test") == 0) return moxy_test_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "reload") == 0) return reload_main(argc - 1, argv + 1);
    moxy_upgrade_init(argv);
    const char *path = "moxy.lua", *pid_opt = NULL;
    int check = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:p:tvh", long_options, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'p': pid_opt = optarg; break;
        case 't': check = 1; break;
        case 'v':
        case 'V': print_versions(); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    /* the first generation: configuration, pools, dicts, scripts and init
     * hooks, listening sockets (moxy -t: all but the sockets) */
    moxy_gen_t *gen = moxy_gen_load(path, NULL, check ? -1 : 0, stderr);
    if (check) {
        if (gen) printf("moxy: configuration %s ok\n", path);
        moxy_gen_release(gen);
        moxy_geoip_close_all();
        return gen ? 0 : 1;
    }
    if (!gen) {
        moxy_geoip_close_all();
        return 1;
    }
    moxy_conf_t *conf = gen->conf;
    int status = 1, pid_written = 0, pid_locked = 0;
    char status_file[4096];
    /* -p overrides pid_file for this process only: a reload reads the file's
     * own again, and must not see a change */
    const char *pid_file = pid_opt ? pid_opt : conf->pid_file;
    int pid_file_set = pid_opt || conf->pid_file_set;

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

    int inherited = moxy_upgrade_inherited_per_addr();
    if (inherited > gen->nworkers) {
        /* every inherited socket needs a worker, or connections queued on it are lost */
        moxy_log_warn("upgrade: %d workers, as the old process had (workers = %d until a restart)", inherited,
                      inherited);
        gen->nworkers = inherited;
    }
    if (moxy_gen_listen(gen, NULL, stderr) != MOXY_OK) goto out;
    /* the PID file is this process's from here on (locked; written once
     * the workers run, so a signal finds its handlers) */
    int inherited_pid_fd = moxy_upgrade_pid_fd();
    if (pid_file) {
        long holder = 0;
        int rc = moxy_pidfile_lock(pid_file, inherited_pid_fd, &holder);
        if (rc == MOXY_DECLINED) {
            char who[48] = "that is starting";
            if (holder > 0) snprintf(who, sizeof(who), "(pid %ld)", holder);
            fprintf(stderr, "moxy: pid_file %s belongs to a running moxy %s; stop that one, or give this one "
                            "a pid_file of its own (pid_file = ... or -p)\n", pid_file, who);
            goto out;
        }
        if (rc == MOXY_OK) {
            pid_locked = 1;
        } else if (pid_file_set) {
            fprintf(stderr, "moxy: cannot lock pid_file %s: %s%s\n", pid_file, strerror(errno),
                    errno == ELOOP ? " (a symbolic link: moxy does not follow one there)" : "");
            goto out;
        } else {
            moxy_log_warn("cannot lock %s (%s): `moxy reload` will not find this moxy; set pid_file",
                          pid_file, strerror(errno));
        }
    } else if (inherited_pid_fd >= 0) {
        close(inherited_pid_fd);
    }
    nworkers = gen->nworkers;
    workers = calloc((size_t)nworkers, sizeof(*workers));
    if (!workers) goto out;
    for (int i = 0; i < nworkers; i++) {
        workers[i] = moxy_worker_new(gen, i);
        if (!workers[i]) {
            fprintf(stderr, "moxy: out of memory\n");
            goto out;
        }
        if (workers[i]->error[0]) {
            fprintf(stderr, "moxy: %s\n", workers[i]->error);
            goto out;
        }
    }
    if (pid_locked) {
        status_path_of(pid_file, status_file, sizeof(status_file));
        if (moxy_pidfile_write() == MOXY_OK) {
            pid_written = 1;
        } else if (pid_file_set) {
            fprintf(stderr, "moxy: cannot write pid_file %s: %s\n", pid_file, strerror(errno));
            goto out;
        } else {
            moxy_log_warn("cannot write %s (%s): `moxy reload` will not find this moxy; set pid_file",
                          pid_file, strerror(errno));
        }
    }
    if (moxy_reload_init(main_base, workers, nworkers, path, gen, pid_written ? status_file : NULL) != MOXY_OK) {
        fprintf(stderr, "moxy: cannot set up reloads: %s\n", strerror(errno));
        goto out;
    }
    gen = NULL; /* the reload module's now */
    moxy_watch_set(conf, main_base);

    /* Workers inherit a mask that blocks the signals the main thread handles. */
    sigset_t set, old;
    sigemptyset(&set);
    int sigs[] = {SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP};
    for (size_t i = 0; i < MOXY_ARRAY_LEN(sigs); i++) sigaddset(&set, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    if (moxy_lua_watchdog_start(workers, nworkers, conf->cpu_budget) != MOXY_OK) {
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

    if (moxy_fleet_apply(conf) != MOXY_OK) {
        for (int i = 0; i < nworkers; i++) moxy_worker_signal(workers[i], MOXY_WORKER_STOP);
        goto out;
    }
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
    moxy_upgrade_took_over();

    event_base_loop(main_base, EVLOOP_NO_EXIT_ON_EMPTY);
    for (size_t i = 0; i < MOXY_ARRAY_LEN(sigs); i++) event_free(sev[i]);
    moxy_log_info("exited");
    status = 0;

out:
    moxy_admin_stop();
    moxy_lua_watchdog_stop();
    for (int i = 0; workers && i < nworkers; i++) moxy_worker_join_free(workers[i]);
    moxy_fleet_stop(); /* after the workers (they publish), before the cache it purges */
    free(workers);
    if (exit_ev) event_free(exit_ev);
    if (exit_fd >= 0) close(exit_fd);
    moxy_watch_stop();
    moxy_upgrade_stop();
    moxy_health_stop();
    moxy_resolver_stop();
    moxy_reload_shutdown();
    moxy_gen_release(gen);
    moxy_geoip_close_all();
    moxy_cache_destroy();
    if (main_base) event_base_free(main_base);
    moxy_pidfile_release(); /* removed if it names us: not after an upgrade took over, nor a failed start */
    moxy_log_close();
    libevent_global_shutdown();
    moxy_event_mem_release();
    return status;
}

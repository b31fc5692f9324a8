/*
 * upgrade.c -- handing the listening sockets to a new binary (see upgrade.h).
 */
#include "ops/upgrade.h"
#include "ops/generation.h"
#include "base/log.h"
#include "base/pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define ENV_FDS "MOXY_LISTEN_FDS"     /* "fd,fd,..." the new process inherits */
#define ENV_FROM "MOXY_UPGRADE_FROM"  /* the old process's PID */
#define ENV_PID_FD "MOXY_PID_FD"      /* the locked PID file's descriptor */
#define MAX_FDS 4096

extern char **environ;

static struct {
    char **argv;
    char exe[PATH_MAX];
    pid_t child;              /* the new process while it starts, or 0 */
    struct event *poll;       /* watches it */
    /* in the new process */
    int parsed;
    pid_t from;
    int nfds;
    int pid_fd;                 /* the inherited PID file, until taken; -1: none */
    int fds[MAX_FDS];
    moxy_addr_t addrs[MAX_FDS]; /* fds[i]'s address (no text) */
} up;

void moxy_upgrade_init(char **argv)
{
    up.argv = argv;
    ssize_t n = readlink("/proc/self/exe", up.exe, sizeof(up.exe) - 1);
    up.exe[n > 0 ? n : 0] = '\0';
}

/* The new process's exit before it took over: the upgrade failed. */
static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    int status;
    if (!up.child || waitpid(up.child, &status, WNOHANG) != up.child) return;
    if (WIFEXITED(status))
        moxy_log_err("upgrade: the new moxy (pid %ld) exited with status %d before taking over; this moxy "
                     "keeps serving", (long)up.child, WEXITSTATUS(status));
    else
        moxy_log_err("upgrade: the new moxy (pid %ld) died of signal %d before taking over; this moxy keeps "
                     "serving", (long)up.child, WTERMSIG(status));
    up.child = 0;
    event_del(up.poll);
}

int moxy_upgrade_start(struct event_base *base, moxy_worker_t *const *workers, int n)
{
    if (up.child && kill(up.child, 0) == 0) {
        moxy_log_warn("USR2: an upgrade is already under way (new moxy pid %ld)", (long)up.child);
        return MOXY_ERROR;
    }
    /* the workers' listeners are stable only outside a reload's switch */
    moxy_gen_t *cur = moxy_gen_current();
    int settled = cur && !moxy_reload_running();
    for (int i = 0; settled && i < n; i++) settled = atomic_load(&workers[i]->gen_id) == cur->id;
    if (!settled) {
        moxy_log_warn("USR2: a reload is under way; send USR2 again once it is over");
        return MOXY_ERROR;
    }
    if (!up.exe[0] || access(up.exe, X_OK) != 0) {
        moxy_log_err("USR2: cannot run %s: %s", up.exe[0] ? up.exe : "(unknown binary)", strerror(errno));
        return MOXY_ERROR;
    }
    /* every worker's sockets: the new process adopts them by address */
    char list[MAX_FDS * 8] = "";
    size_t o = 0;
    int fds[MAX_FDS], nfds = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < workers[i]->nlisteners && nfds < MAX_FDS; j++) {
            int fd = workers[i]->listeners[j].fd;
            if (fd < 0) continue;
            fds[nfds++] = fd;
            o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%d", o ? "," : "", fd);
        }
    }
    /* the environment, built before fork: the child only execs.  environ
     * has no ENV_FDS, ENV_FROM or ENV_PID_FD: parse() unset them before
     * main handled USR2 (moxy_upgrade_inherited_per_addr) */
    int nenv = 0, pid_fd = moxy_pidfile_fd();
    while (environ[nenv]) nenv++;
    char **env = calloc((size_t)nenv + 4, sizeof(char *));
    char *fds_var = malloc(o + sizeof(ENV_FDS) + 2), from_var[64], pid_var[64];
    if (!env || !fds_var) {
        free(env);
        free(fds_var);
        moxy_log_err("USR2: out of memory");
        return MOXY_ERROR;
    }
    memcpy(env, environ, (size_t)nenv * sizeof(char *));
    sprintf(fds_var, "%s=%s", ENV_FDS, list);
    snprintf(from_var, sizeof(from_var), "%s=%ld", ENV_FROM, (long)getpid());
    env[nenv] = fds_var;
    env[nenv + 1] = from_var;
    if (pid_fd >= 0) { /* env[nenv + 3] (or + 2): calloc's NULL */
        snprintf(pid_var, sizeof(pid_var), "%s=%d", ENV_PID_FD, pid_fd);
        env[nenv + 2] = pid_var;
    }

    pid_t pid = fork();
    if (pid == 0) {
        /* the child of a threaded process: async-signal-safe calls only */
        for (int i = 0; i < nfds; i++) fcntl(fds[i], F_SETFD, 0);
        if (pid_fd >= 0) fcntl(pid_fd, F_SETFD, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(up.exe, up.argv, env);
        _exit(127);
    }
    free(env);
    free(fds_var);
    if (pid < 0) {
        moxy_log_err("USR2: fork: %s", strerror(errno));
        return MOXY_ERROR;
    }
    up.child = pid;
    if (!up.poll) up.poll = event_new(base, -1, EV_PERSIST, poll_cb, NULL);
    struct timeval tv = {0, 100 * 1000};
    if (up.poll) event_add(up.poll, &tv);
    moxy_log_info("USR2: upgrade: started %s as pid %ld with %d listening socket%s; it takes over once it "
                  "serves", up.exe, (long)pid, nfds, nfds == 1 ? "" : "s");
    return MOXY_OK;
}

/* The new process: read the inherited sockets (once). */
static void parse(void)
{
    if (up.parsed) return;
    up.parsed = 1;
    up.pid_fd = -1;
    const char *fds = getenv(ENV_FDS), *from = getenv(ENV_FROM), *pid_fd = getenv(ENV_PID_FD);
    if (from) up.from = (pid_t)atol(from);
    if (pid_fd) {
        long fd = atol(pid_fd);
        struct stat st;
        if (fd > 2 && fd <= INT_MAX && fstat((int)fd, &st) == 0 && S_ISREG(st.st_mode)) {
            fcntl((int)fd, F_SETFD, FD_CLOEXEC);
            up.pid_fd = (int)fd;
        }
    }
    for (const char *p = fds; p && *p && up.nfds < MAX_FDS;) {
        char *end;
        long fd = strtol(p, &end, 10);
        if (end == p) break;
        p = *end == ',' ? end + 1 : end;
        moxy_addr_t *a = &up.addrs[up.nfds];
        a->salen = sizeof(a->sa);
        if (fd < 0 || fd > INT_MAX || getsockname((int)fd, (struct sockaddr *)&a->sa, &a->salen) != 0)
            continue; /* not a socket we can use */
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        up.fds[up.nfds++] = (int)fd;
    }
    /* not for a later child */
    unsetenv(ENV_FDS);
    unsetenv(ENV_FROM);
    unsetenv(ENV_PID_FD);
}

int moxy_upgrade_inherited_per_addr(void)
{
    parse();
    int most = 0;
    for (int i = 0; i < up.nfds; i++) {
        int same_addr = 0;
        for (int j = 0; j < up.nfds; j++)
            same_addr += moxy_addr_same(&up.addrs[i], &up.addrs[j]);
        if (same_addr > most) most = same_addr;
    }
    return most;
}

int moxy_upgrade_take(const moxy_addr_t *addr)
{
    parse();
    for (int i = 0; i < up.nfds; i++) {
        if (up.fds[i] < 0 || !moxy_addr_same(&up.addrs[i], addr)) continue;
        int fd = up.fds[i];
        up.fds[i] = -1;
        return fd;
    }
    return -1;
}

int moxy_upgrade_pid_fd(void)
{
    parse();
    int fd = up.pid_fd;
    up.pid_fd = -1;
    return fd;
}

int moxy_upgrade_inherits_port(int port)
{
    parse();
    for (int i = 0; i < up.nfds; i++)
        if (moxy_addr_port(&up.addrs[i]) == port) return 1;
    return 0;
}

int moxy_upgrade_is_new(void)
{
    parse();
    return up.from > 1;
}

void moxy_upgrade_took_over(void)
{
    parse();
    if (up.pid_fd >= 0) close(up.pid_fd); /* this configuration has no pid_file */
    up.pid_fd = -1;
    for (int i = 0; i < up.nfds; i++) {
        if (up.fds[i] >= 0) close(up.fds[i]); /* an address this configuration does not listen on */
        up.fds[i] = -1;
    }
    up.nfds = 0;
    if (up.from <= 1) return;
    if (kill(up.from, SIGQUIT) == 0)
        moxy_log_info("upgrade: serving; the old moxy (pid %ld) drains and exits", (long)up.from);
    else
        moxy_log_warn("upgrade: cannot tell the old moxy (pid %ld) to drain: %s", (long)up.from, strerror(errno));
    up.from = 0;
}

int moxy_upgrade_handing_over(void)
{
    return up.child > 0 && kill(up.child, 0) == 0;
}

void moxy_upgrade_stop(void)
{
    if (up.poll) event_free(up.poll);
    up.poll = NULL;
}

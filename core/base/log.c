/*
 * log.c -- error log and buffered access-log writer; see log.h.
 */
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char *const moxy_log_level_names[] = {"error", "warn", "info", "debug"};

static int error_fd = 2;
static int error_level = MOXY_LOG_INFO;
static char *error_path; /* NULL when stderr */
static int access_fd = -1;
static char *access_path;

/* Each log's write failures (a full disk, /dev/full, an I/O error): the
 * first of a run is reported (the access log's in the error log, the error
 * log's on stderr), the rest only counted, and the first write that works
 * again says how many were lost.  Any thread writes: atomics. */
static struct {
    atomic_ullong failures; /* writes that failed */
    atomic_ullong dropped;  /* lines they lost */
    atomic_ullong run;      /* failures since the last write that worked */
    atomic_int failing;     /* the last write failed */
} health[MOXY_LOGS];

/* Per log: 1 when its descriptor is a pipe or a socket (stdout under a
 * container runtime, a FIFO), whose reader may stop reading: written only
 * as far as it takes bytes without blocking; 0: a file; -1: not looked at
 * yet (after an open or reopen). */
static atomic_int pipe_like[MOXY_LOGS] = {-1, -1};

static int open_append(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int moxy_log_open_error(const char *path, int level)
{
    error_level = level;
    if (!path || strcmp(path, "stderr") == 0) return MOXY_OK;
    int fd = open_append(path);
    if (fd < 0) return MOXY_ERROR;
    free(error_path);
    error_path = strdup(path);
    if (error_fd > 2) close(error_fd);
    error_fd = fd;
    atomic_store(&pipe_like[MOXY_LOG_ERROR], -1);
    return MOXY_OK;
}

int moxy_log_open_access(const char *path)
{
    if (!path || !*path) return MOXY_OK;
    /* stdout, stderr (containers): a copy of the descriptor, nothing to reopen */
    int std = strcmp(path, "stdout") == 0 || strcmp(path, "stderr") == 0;
    int fd = std ? fcntl(path[3] == 'o' ? 1 : 2, F_DUPFD_CLOEXEC, 3) : open_append(path);
    if (fd < 0) return MOXY_ERROR;
    free(access_path);
    access_path = std ? NULL : strdup(path);
    if (access_fd >= 0) close(access_fd);
    access_fd = fd;
    atomic_store(&pipe_like[MOXY_LOG_ACCESS], -1);
    return MOXY_OK;
}

static int reopen_onto(const char *path, int fd)
{
    int nfd = open_append(path);
    if (nfd < 0) return MOXY_ERROR;
    /* dup2 swaps the file under the same descriptor number atomically:
     * a worker writing concurrently writes either to the old or the new file. */
    int r = dup2(nfd, fd) < 0 ? MOXY_ERROR : MOXY_OK;
    close(nfd);
    return r;
}

int moxy_log_reopen(void)
{
    int rc = MOXY_OK;
    for (int k = 0; k < MOXY_LOGS; k++) atomic_store(&pipe_like[k], -1); /* a FIFO may now be a file */
    if (error_path && reopen_onto(error_path, error_fd) != MOXY_OK) {
        moxy_log_err("cannot reopen error log \"%s\": %s", error_path, strerror(errno));
        rc = MOXY_ERROR;
    }
    if (access_path && reopen_onto(access_path, access_fd) != MOXY_OK) {
        moxy_log_err("cannot reopen access log \"%s\": %s", access_path, strerror(errno));
        rc = MOXY_ERROR;
    }
    return rc;
}

int moxy_log_enabled(int level)
{
    return level <= error_level;
}

/* Write the n bytes at p; 0, or -1 with errno set (what is left unwritten
 * at *left).  is_pipe: fd is a pipe or socket, written in pieces of at most
 * PIPE_BUF (whole lines when they fit) while poll says it has room: a
 * reader that stopped costs the lines (EAGAIN), never the worker's loop. */
static int write_all(int fd, const char *p, size_t n, size_t *left, int is_pipe)
{
    while (n > 0) {
        size_t chunk = n;
        if (is_pipe) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            int r = poll(&pf, 1, 0);
            if (r < 0 && errno == EINTR) continue;
            if (r == 0) errno = EAGAIN;
            if (r <= 0) {
                *left = n;
                return -1;
            }
            chunk = MOXY_MIN(n, (size_t)PIPE_BUF); /* fits the room POLLOUT promises */
            const char *nl = chunk < n ? memrchr(p, '\n', chunk) : NULL;
            if (nl) chunk = (size_t)(nl - p) + 1;
        }
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            *left = n;
            return -1;
        }
        if (w == 0) { /* nothing taken: treat as full rather than loop */
            errno = ENOSPC;
            *left = n;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    *left = 0;
    return 0;
}

static unsigned long long count_lines(const char *p, size_t n)
{
    unsigned long long lines = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))); p++) lines++;
    return lines;
}

/* Write n bytes at p to log which's descriptor fd, counting a failure and
 * reporting the first of a run (and the end of one). */
static void log_write(int which, int fd, const char *p, size_t n)
{
    size_t left;
    int is_pipe = atomic_load_explicit(&pipe_like[which], memory_order_relaxed);
    if (is_pipe < 0) {
        struct stat st;
        is_pipe = fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
        atomic_store_explicit(&pipe_like[which], is_pipe, memory_order_relaxed);
    }
    if (write_all(fd, p, n, &left, is_pipe) == 0) {
        if (!atomic_load_explicit(&health[which].failing, memory_order_relaxed)) return;
        if (!atomic_exchange(&health[which].failing, 0)) return; /* another thread reports it */
        unsigned long long run = atomic_exchange(&health[which].run, 0);
        moxy_log(MOXY_LOG_WARN, NULL, "%s log: writing again after %llu failed writes (%llu lines lost in all)",
                 which == MOXY_LOG_ACCESS ? "access" : "error", run,
                 atomic_load(&health[which].dropped));
        return;
    }
    int err = errno;
    atomic_fetch_add(&health[which].failures, 1);
    atomic_fetch_add(&health[which].run, 1);
    unsigned long long lines = count_lines(p + (n - left), left);
    atomic_fetch_add(&health[which].dropped, lines ? lines : 1);
    if (atomic_exchange(&health[which].failing, 1)) return; /* reported when the run started */
    if (which == MOXY_LOG_ACCESS) {
        moxy_log_err("access log \"%s\": write: %s; its lines are dropped (and counted in "
                     "moxy_log_write_failures_total) until a write works again",
                     access_path ? access_path : "stdout/stderr", strerror(err));
    } else if (fd != 2) {
        char msg[512];
        int m = snprintf(msg, sizeof(msg),
                         "moxy: error log \"%s\": write: %s; its lines are dropped (and counted in "
                         "moxy_log_write_failures_total) until a write works again\n",
                         error_path ? error_path : "?", strerror(err));
        if (m > 0) (void)write_all(2, msg, MOXY_MIN((size_t)m, sizeof(msg) - 1), &left, 1);
    }
}

void moxy_log_write_failures(int which, unsigned long long *failures, unsigned long long *dropped)
{
    *failures = atomic_load_explicit(&health[which].failures, memory_order_relaxed);
    *dropped = atomic_load_explicit(&health[which].dropped, memory_order_relaxed);
}

/* Copy the n bytes of msg into out (room bytes), control bytes escaped so
 * that one event stays one line whatever a logged value holds (a script's
 * moxy.log.err("a\nb"), a client's bytes in a reason): \n, \r, \t, other
 * controls and DEL as \xHH.  Stops before an escape that would not fit.
 * Returns the bytes written. */
static size_t escape_line(char *out, size_t room, const char *msg, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)msg[i];
        if (ch >= 0x20 && ch != 0x7f) {
            if (o + 1 > room) break;
            out[o++] = (char)ch;
            continue;
        }
        char e = ch == '\n' ? 'n' : ch == '\r' ? 'r' : ch == '\t' ? 't' : 0;
        if (o + (e ? 2 : 4) > room) break;
        out[o++] = '\\';
        if (e) {
            out[o++] = e;
        } else {
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    return o;
}

/* Write the line: time, level, rid=, the len bytes of msg escaped. */
static void log_line(int level, const char *rid, const char *msg, size_t len)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = (size_t)snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ [%s] ",
                                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                                tm.tm_sec, (int)(tv.tv_usec / 1000), moxy_log_level_names[level]);
    if (rid && *rid) {
        memcpy(line + n, "rid=", 4);
        n += 4;
        n += escape_line(line + n, 200, rid, strlen(rid));
        line[n++] = ' ';
    }
    /* a trailing newline of the message is the line's own */
    while (len > 0 && msg[len - 1] == '\n') len--;
    n += escape_line(line + n, sizeof(line) - n - 1, msg, len);
    line[n++] = '\n';
    log_write(MOXY_LOG_ERROR, error_fd, line, n);
}

void moxy_log(int level, const char *rid, const char *fmt, ...)
{
    if (level > error_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m < 0) m = 0;
    if (m > (int)sizeof(msg) - 1) m = (int)sizeof(msg) - 1;
    log_line(level, rid, msg, (size_t)m);
}

void moxy_log_bytes(int level, const char *rid, const char *msg, size_t len)
{
    if (level > error_level) return;
    log_line(level, rid, msg, len);
}

int moxy_alog_enabled(void)
{
    return access_fd >= 0;
}

char *moxy_alog_reserve(moxy_alog_buf_t *b, size_t n)
{
    if (n > MOXY_ALOG_BUF) return NULL;
    if (MOXY_ALOG_BUF - b->len < n) moxy_alog_flush(b);
    return b->data + b->len;
}

void moxy_alog_flush(moxy_alog_buf_t *b)
{
    if (b->len && access_fd >= 0) log_write(MOXY_LOG_ACCESS, access_fd, b->data, b->len);
    b->len = 0;
}

void moxy_log_close(void)
{
    if (access_fd >= 0) close(access_fd);
    access_fd = -1;
    if (error_fd > 2) close(error_fd);
    error_fd = 2;
    free(access_path);
    free(error_path);
    access_path = error_path = NULL;
}

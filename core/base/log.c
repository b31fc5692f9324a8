/*
 * log.c -- error log and buffered access-log writer; see log.h.
 */
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char *const moxy_log_level_names[] = {"error", "warn", "info", "debug"};

static int error_fd = 2;
static int error_level = MOXY_LOG_INFO;
static char *error_path; /* NULL when stderr */
static int access_fd = -1;
static char *access_path;

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

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return; /* nowhere left to report it */
        }
        p += w;
        n -= (size_t)w;
    }
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
    write_all(error_fd, line, n);
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
    if (b->len && access_fd >= 0) write_all(access_fd, b->data, b->len);
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

/*
 * log.h -- the error log (levels, one line per event, written at once) and
 * the buffered writer the access log uses.
 *
 * Files are opened by the main thread.  USR1 reopens them in place: the new
 * file is dup2()ed onto the old descriptor, so worker threads never see a
 * closed descriptor and never take a lock.
 */
#ifndef MOXY_LOG_H
#define MOXY_LOG_H

#include "base/moxy.h"

enum { MOXY_LOG_ERR = 0, MOXY_LOG_WARN, MOXY_LOG_INFO, MOXY_LOG_DEBUG };

/* Level names, indexed by the enum above. */
extern const char *const moxy_log_level_names[];

/* Open the error log: "stderr" or a file path (appended).  MOXY_OK or MOXY_ERROR. */
int moxy_log_open_error(const char *path, int level);

/* Open the access log file (appended); "" or NULL turns it off.  Returns MOXY_OK
 * or MOXY_ERROR with errno set. */
int moxy_log_open_access(const char *path);

/* Reopen both files under their configured names (USR1).  MOXY_OK or MOXY_ERROR. */
int moxy_log_reopen(void);

/* 1 when messages of this level are written. */
int moxy_log_enabled(int level);

/* Write one error-log line: time, level, optional request id, message.  The
 * message's control bytes are escaped (\n, \r, \t, \xHH): a logged value
 * can neither split the line nor forge another. */
void moxy_log(int level, const char *rid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same with the len bytes at msg as the message, as they are (a NUL
 * included: escaped like every control byte). */
void moxy_log_bytes(int level, const char *rid, const char *msg, size_t len);

#define moxy_log_err(...) moxy_log(MOXY_LOG_ERR, NULL, __VA_ARGS__)
#define moxy_log_warn(...) moxy_log(MOXY_LOG_WARN, NULL, __VA_ARGS__)
#define moxy_log_info(...) moxy_log(MOXY_LOG_INFO, NULL, __VA_ARGS__)

/* A per-worker output buffer for the access log. */
#define MOXY_ALOG_BUF 65536
typedef struct {
    size_t len;
    char data[MOXY_ALOG_BUF];
} moxy_alog_buf_t;

/* 1 when an access log is configured. */
int moxy_alog_enabled(void);

/* Room for n more bytes in b (flushing first if needed); NULL if n is too big. */
char *moxy_alog_reserve(moxy_alog_buf_t *b, size_t n);

/* Write out what b holds. */
void moxy_alog_flush(moxy_alog_buf_t *b);

/* The logs, for moxy_log_write_failures. */
enum { MOXY_LOG_ACCESS = 0, MOXY_LOG_ERROR, MOXY_LOGS };

/* How many writes to log which (MOXY_LOG_ACCESS or MOXY_LOG_ERROR) failed
 * since start, and how many lines they lost, into *failures and *dropped
 * (any thread).  A failed write is reported once per run of failures: the
 * access log's in the error log, the error log's on stderr. */
void moxy_log_write_failures(int which, unsigned long long *failures, unsigned long long *dropped);

/* Close the log files (at exit). */
void moxy_log_close(void);

#endif

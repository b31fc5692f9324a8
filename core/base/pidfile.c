/*
 * pidfile.c -- the PID file, locked for the owner's life (see pidfile.h).
 */
#include "base/pidfile.h"
#include "base/moxy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOCK_TRIES 5 /* a `moxy reload` checking the lock holds it for a moment */

static struct {
    int fd; /* the locked file, or -1 */
    char path[4096];
} pf = {-1, ""};

/* 1 when fd is the file path names now (not one unlinked or replaced). */
static int same_file(int fd, const char *path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

/* The PID written in the file open at fd, or 0. */
static long read_pid(int fd)
{
    char text[32];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
    if (n <= 0) return 0;
    text[n] = '\0';
    long pid = 0;
    if (sscanf(text, "%ld", &pid) != 1 || pid <= 0) return 0;
    return pid;
}

static void pause_ms(long ms)
{
    struct timespec ts = {0, ms * 1000 * 1000};
    nanosleep(&ts, NULL);
}

int moxy_pidfile_lock(const char *path, int inherited, long *holder)
{
    *holder = 0;
    if ((size_t)snprintf(pf.path, sizeof(pf.path), "%s", path) >= sizeof(pf.path)) {
        if (inherited >= 0) close(inherited);
        errno = ENAMETOOLONG;
        return MOXY_ERROR;
    }
    if (inherited >= 0) {
        /* an upgrade: the old process's open file, locked already */
        if (same_file(inherited, path) && flock(inherited, LOCK_EX | LOCK_NB) == 0) {
            pf.fd = inherited;
            return MOXY_OK;
        }
        close(inherited); /* another pid_file: this process takes its own */
    }
    for (int tries = 0; tries < 2 * LOCK_TRIES; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) return MOXY_ERROR;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            if (e == EWOULDBLOCK) *holder = read_pid(fd);
            close(fd);
            if (e != EWOULDBLOCK) {
                errno = e;
                return MOXY_ERROR;
            }
            if (*holder > 0 || tries >= LOCK_TRIES) return MOXY_DECLINED;
            pause_ms(20);
            continue;
        }
        /* the owner before us may have removed the file between our open
         * and our lock: then the lock is on a name nobody sees; again */
        if (same_file(fd, path)) {
            pf.fd = fd;
            return MOXY_OK;
        }
        close(fd);
    }
    errno = EAGAIN;
    return MOXY_ERROR;
}

int moxy_pidfile_write(void)
{
    if (pf.fd < 0) {
        errno = EBADF;
        return MOXY_ERROR;
    }
    char text[32];
    int n = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
    /* in place: a reader sees the old PID, the new one, or the new one with
     * the old one's tail before the truncate -- never an empty file */
    if (pwrite(pf.fd, text, (size_t)n, 0) != n || ftruncate(pf.fd, n) != 0) return MOXY_ERROR;
    return MOXY_OK;
}

int moxy_pidfile_fd(void)
{
    return pf.fd;
}

void moxy_pidfile_release(void)
{
    if (pf.fd < 0) return;
    /* unlink while locked, so a moxy starting now cannot take the name
     * between the check and the unlink; never LOCK_UN: after an upgrade
     * the new process shares this lock */
    if (read_pid(pf.fd) == (long)getpid() && same_file(pf.fd, pf.path)) unlink(pf.path);
    close(pf.fd);
    pf.fd = -1;
}

long moxy_pidfile_owner(const char *path, char *why, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "%s", strerror(errno));
        return 0;
    }
    long pid = read_pid(fd);
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        flock(fd, LOCK_UN); /* ours alone: a shared lock of this open file */
        snprintf(why, len, "no moxy holds it (left by a moxy that was killed%s)",
                 pid > 0 ? "; its PID may be another process's now" : "");
        pid = 0;
    } else if (errno != EWOULDBLOCK) {
        snprintf(why, len, "cannot check its lock: %s", strerror(errno));
        pid = 0;
    } else if (pid <= 0) {
        snprintf(why, len, "no PID in it yet (moxy is starting)");
    }
    close(fd);
    return pid;
}

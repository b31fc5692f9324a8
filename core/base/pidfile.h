/*
 * pidfile.h -- the PID file, locked for the life of the process that owns it.
 *
 * The file is opened (created 0644) and locked with flock(LOCK_EX) before
 * moxy serves; the lock is held until the process exits, so a second moxy
 * naming the same file is refused instead of overwriting it, and `moxy
 * reload` can tell a live owner from a stale file (a lock dies with its
 * process; a PID can be reused).  The PID is written in place (never by a
 * rename, which would leave the lock on the old inode).  Only the owner
 * removes the file, and only while it still names the owner.
 *
 * A binary upgrade hands the locked descriptor to the new process
 * (upgrade.c): both then hold the same lock, the new one writes its PID,
 * and the old one's exit neither unlocks (it only closes its descriptor:
 * flock belongs to the open file, which the new process keeps) nor removes
 * a file that names someone else.
 */
#ifndef MOXY_PIDFILE_H
#define MOXY_PIDFILE_H

#include <stddef.h>

/* Take the PID file at path for this process: open it and lock it.
 * inherited is a descriptor an upgrade handed over (-1: none): used when
 * it is the same file, closed otherwise.  Returns MOXY_OK; MOXY_DECLINED
 * when another process holds the lock (*holder: the PID the file names, 0
 * when unreadable); MOXY_ERROR with errno set when the file cannot be
 * opened or locked.  The file's content is not changed yet. */
int moxy_pidfile_lock(const char *path, int inherited, long *holder);

/* Write this process's PID into the locked file.  MOXY_OK, or MOXY_ERROR
 * with errno set (also when no file is locked). */
int moxy_pidfile_write(void);

/* The locked file's descriptor (an upgrade hands it over), or -1. */
int moxy_pidfile_fd(void);

/* At exit: remove the file when it still names this process, close it.
 * The lock goes with the last descriptor of the open file. */
void moxy_pidfile_release(void);

/* For `moxy reload`: the PID of the live moxy that owns path, or 0 with
 * why (len bytes) saying what is wrong: no file, no PID in it, or no
 * process holding its lock (a stale file: the PID may be anyone's now). */
long moxy_pidfile_owner(const char *path, char *why, size_t len);

#endif

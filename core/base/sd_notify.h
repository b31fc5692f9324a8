/*
 * sd_notify.h -- tell systemd how the service is doing (sd_notify(3)),
 * without linking libsystemd.
 *
 * The protocol is one datagram of "KEY=VALUE" lines sent to the AF_UNIX
 * socket named by $NOTIFY_SOCKET: a path, or an abstract name when it starts
 * with '@'.  systemd sets the variable for Type=notify services; everywhere
 * else it is unset and these calls do nothing.  moxy sends READY=1 (with
 * MAINPID= and STATUS=) once its workers run and its listeners are open, and
 * STOPPING=1 when a QUIT, TERM or INT starts the exit.
 */
#ifndef MOXY_SD_NOTIFY_H
#define MOXY_SD_NOTIFY_H

#include "base/moxy.h"

/* Send state (e.g. "READY=1\nSTATUS=serving") to $NOTIFY_SOCKET.  MOXY_OK when
 * it was sent or when NOTIFY_SOCKET is unset or empty; MOXY_ERROR (logged as a
 * warning, errno set) when the address is unusable or the send failed.  Opens
 * and closes its own socket; call it from one thread at a time. */
int moxy_sd_notify(const char *state);

/* moxy_sd_notify with a printf format; states longer than 1 KiB are an error. */
int moxy_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

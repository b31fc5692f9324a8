/*
 * upgrade.h -- binary upgrade without dropping a connection.
 *
 * SIGUSR2 to a running moxy starts the binary at the path it was started
 * from (a new version installed over it) with the same arguments, handing
 * it every listening socket: the sockets themselves, not their addresses,
 * so no connection waiting in an accept queue is lost.  The new process
 * loads its configuration as at any start, adopts the inherited sockets
 * for the addresses it listens on (MOXY_LISTEN_FDS), and once it serves it
 * sends SIGQUIT to the old one, which drains and exits.  If the new one
 * fails to start, it exits and the old one, which never stopped accepting,
 * goes on serving (logged).  The locked PID file goes along (pidfile.h).
 */
#ifndef MOXY_UPGRADE_H
#define MOXY_UPGRADE_H

#include "base/config.h"
#include "ops/workers.h"

#include <event2/event.h>

/* Remember how this process was started (main's argv, before anything
 * changes it), for a later upgrade. */
void moxy_upgrade_init(char **argv);

/* Start the new binary (main thread, SIGUSR2) with the listening sockets
 * of these workers.  Logs what happens; MOXY_OK or MOXY_ERROR. */
int moxy_upgrade_start(struct event_base *base, moxy_worker_t *const *workers, int n);

/* In the new process: how many inherited sockets listen on each address
 * (the most for any address; 0 when not started by an upgrade). */
int moxy_upgrade_inherited_per_addr(void);

/* In the new process: an inherited socket listening on addr, taken (each
 * is given once), or -1. */
int moxy_upgrade_take(const moxy_addr_t *addr);

/* In the new process: the old one's locked PID file (pidfile.h), taken
 * (given once), or -1. */
int moxy_upgrade_pid_fd(void);

/* In the new process until it took over: 1 when an inherited socket
 * listens on this port (any address), so the old process is not "another
 * process on the address". */
int moxy_upgrade_inherits_port(int port);

/* 1 in a process an upgrade started, until it took over: the old process
 * still listens where this one will (the admin listener too). */
int moxy_upgrade_is_new(void);

/* In the new process, once it serves: close the inherited sockets and PID
 * file nobody took and tell the old process to drain.  No-op without an
 * upgrade. */
void moxy_upgrade_took_over(void);

/* 1 when this process started a new one that is still running: a QUIT
 * now is the hand-over, not a stop (systemd is not told STOPPING). */
int moxy_upgrade_handing_over(void);

/* Stop watching a started upgrade (exit). */
void moxy_upgrade_stop(void);

#endif

/*
 * socket.h -- moxy.socket.tcp: a non-blocking TCP (and TLS) client socket
 * for hooks and timer callbacks, in the shape of OpenResty's cosockets
 * (the FFI exports of lua/moxy/socket.lua).  A call that cannot finish at
 * once parks the calling hook (MOXY_AGAIN: lua/moxy/socket.lua then waits
 * in runtime.wait) while the worker's event loop runs it, and wakes it
 * with true, or nil and an error.
 *
 * Ownership: a socket is made by moxy_ffi_sock_new and freed by
 * moxy_ffi_sock_free (its Lua object's finaliser), on its worker's thread.
 * Its connection is its own until setkeepalive hands it to the worker's
 * dialer (net/dial.h), close closes it, or the request whose hook
 * connected it ends (then it closes).  A call in progress belongs to
 * the task that waits for it; if that task is dropped (its client left),
 * the socket is closed.  When its worker ends, an open socket loses its
 * connection and its events; the object stays until its finaliser.
 */
#ifndef MOXY_API_SOCKET_H
#define MOXY_API_SOCKET_H

#include <stddef.h>

/* BEGIN FFI lua/moxy/socket.lua */
typedef struct moxy_sock_s moxy_sock_t;

/* A closed socket of the running worker (NULL: out of memory, or no
 * worker on this thread). */
moxy_sock_t *moxy_ffi_sock_new(void);

/* Close s and free it (its Lua object is collected). */
void moxy_ffi_sock_free(moxy_sock_t *s);

/* Connect s (closing what it held) to host (hlen bytes: an IP literal
 * without brackets, or a name) and port, or take an idle connection kept
 * under pool (plen bytes).  MOXY_OK: a kept one was taken; MOXY_AGAIN:
 * connecting, the hook waits; MOXY_DECLINED: no hook or timer callback
 * runs; MOXY_ERROR: failed at once, the reason in err (errlen bytes). */
int moxy_ffi_sock_connect(moxy_sock_t *s, const char *host, size_t hlen, int port, const char *pool,
                          size_t plen, double timeout, char *err, size_t errlen);

/* Run the TLS handshake on s's connection toward name (nlen bytes: sent
 * as SNI and verified when verify; an IP literal is verified against the
 * certificate's IP names; nlen 0: no name).  MOXY_OK: the connection is
 * TLS already (it came from the idle pool); MOXY_AGAIN, MOXY_DECLINED,
 * MOXY_ERROR as connect's. */
int moxy_ffi_sock_tls(moxy_sock_t *s, const char *name, size_t nlen, int verify, double timeout,
                      char *err, size_t errlen);

/* Send len bytes of data (copied).  MOXY_OK: all handed to the kernel;
 * MOXY_AGAIN: the rest goes as the peer reads, the hook waits (timeout:
 * seconds without progress); MOXY_DECLINED, MOXY_ERROR as connect's. */
int moxy_ffi_sock_send(moxy_sock_t *s, const char *data, size_t len, double timeout, char *err,
                       size_t errlen);

/* What receive waits for. */
enum {
    MOXY_SOCK_BYTES = 0, /* exactly n bytes */
    MOXY_SOCK_LINE = 1,  /* a line ended by LF (a CR before it is dropped) */
    MOXY_SOCK_ALL = 2,   /* everything until the peer closes */
    MOXY_SOCK_ANY = 3,   /* whatever came, at most n bytes, at least one */
    MOXY_SOCK_UNTIL = 4  /* the bytes before pat (plen bytes; with it when n & 1); with
                            n >> 1 > 0 as a size, at most that many of them at a time */
};

/* Receive as mode says.  MOXY_OK: *data and *len are what was received
 * (valid until the next call on s), *consume the bytes to drop after
 * reading them (moxy_ffi_sock_consume); MOXY_DONE (MOXY_SOCK_UNTIL with a
 * size): a part before the pattern, more follows.  MOXY_AGAIN: the hook
 * waits (timeout: seconds without a byte) and calls again when woken with
 * true.  MOXY_ERROR: err says why ("closed", "timeout", "buffer full",
 * ...), and *data / *len hold what was received so far (consumed).
 * MOXY_DECLINED as connect's. */
int moxy_ffi_sock_receive(moxy_sock_t *s, int mode, size_t n, const char *pat, size_t plen,
                          double timeout, const char **data, size_t *len, size_t *consume, char *err,
                          size_t errlen);

/* Drop n received bytes (after a receive's MOXY_OK or MOXY_DONE). */
void moxy_ffi_sock_consume(moxy_sock_t *s, size_t n);

/* Keep s's connection idle under its pool for idle seconds (<= 0: the
 * worker's default), at most size there (the pool's oldest go).
 * MOXY_OK: kept (s is closed); MOXY_DECLINED: not kept but closed, err
 * says why (bytes left unsent, the peer closed or sent more, the worker's
 * idle pool full); MOXY_ERROR: err says why (not connected, unread bytes,
 * a call in progress: s is left as it is). */
int moxy_ffi_sock_keepalive(moxy_sock_t *s, double idle, int size, char *err, size_t errlen);

/* Close s's connection.  MOXY_ERROR: it was not open. */
int moxy_ffi_sock_close(moxy_sock_t *s);

/* Times s's connection was taken from the idle pool before (0: new). */
int moxy_ffi_sock_reused(const moxy_sock_t *s);

/* Set an option: "tcp-nodelay", "keepalive" (SO_KEEPALIVE), "sndbuf",
 * "rcvbuf" (on the connection: MOXY_ERROR when closed) or "max_buffer"
 * (bytes a receive may gather, 16 MiB by default).  MOXY_ERROR: err says
 * why. */
int moxy_ffi_sock_setoption(moxy_sock_t *s, const char *name, double value, char *err, size_t errlen);
/* END FFI */

/* --- what a receive answers, for socket.c and fuzz/socket_scan_fuzz.c --- */
struct evbuffer;

/* What the bytes in `in` answer for a receive (mode, n, pat, plen as
 * moxy_ffi_sock_receive's; max: max_buffer; eof: the peer closed):
 * MOXY_OK / MOXY_DONE (a part) with *len bytes to hand and *consume to
 * drop; MOXY_AGAIN: more must come; MOXY_ERROR: no answer within max bytes
 * (or a bad mode).  *scanned: bytes known not to hold the line's end or
 * the pattern, kept between calls for the same receive (0 for a new one)
 * so that a long line read piece by piece is searched once. */
int moxy_sock_scan(struct evbuffer *in, int mode, size_t n, const char *pat, size_t plen, size_t max, int eof,
                   size_t *scanned, size_t *len, size_t *consume);

/* moxy.socket's part in a worker's life (lifecycle.h): its open sockets,
 * which lose their connections when the worker ends. */
extern struct moxy_module_s moxy_socket_module;

#endif

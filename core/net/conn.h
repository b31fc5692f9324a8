/*
 * conn.h -- a connection's socket behind its transport.  Every byte moxy
 * reads from or writes to a client, an origin, a health-checked peer or a
 * moxy.http server goes through the transport's operations table, so that a
 * second implementation (TLS) slides in without the protocols above
 * knowing.  Plain TCP (or a unix socket) is moxy_transport_plain.
 *
 * Returns follow read(2)/write(2): bytes moved, 0 at the end of the stream
 * (reads), -1 with errno (EAGAIN: nothing can move now; wait for the
 * socket's event).
 */
#ifndef MOXY_CONN_H
#define MOXY_CONN_H

#include <event2/buffer.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct moxy_conn_s moxy_conn_t;

/* The transport can hand an evbuffer's file segments (a cache hit's memfd
 * body) to the kernel with sendfile; without it they are copied. */
#define MOXY_TRANSPORT_SENDFILE 1u

typedef struct moxy_transport_s {
    const char *name;
    unsigned flags; /* MOXY_TRANSPORT_* */
    /* Read up to max bytes into the end of b. */
    ssize_t (*read)(moxy_conn_t *c, struct evbuffer *b, size_t max);
    /* Read up to len bytes into p. */
    ssize_t (*recv)(moxy_conn_t *c, void *p, size_t len);
    /* Write from the front of b, draining what went out. */
    ssize_t (*write)(moxy_conn_t *c, struct evbuffer *b);
    /* Write up to len bytes from p. */
    ssize_t (*send)(moxy_conn_t *c, const void *p, size_t len);
    /* End the write side once what was written is out (TCP's FIN).  0 or
     * -1 with errno. */
    int (*shutdown)(moxy_conn_t *c);
    /* Bytes the transport took from the socket and holds for the next read:
     * while there are any, a reader must not wait for the socket. */
    size_t (*pending)(const moxy_conn_t *c);
    /* Free the transport's state and close the socket. */
    void (*close)(moxy_conn_t *c);
} moxy_transport_t;

/* A connection's socket and its transport. */
struct moxy_conn_s {
    int fd;                     /* the socket; -1: none (closed, or never opened) */
    const moxy_transport_t *t;
    void *ctx;                  /* the transport's own state, NULL for plain */
};

extern const moxy_transport_t moxy_transport_plain;

/* c takes the socket fd, over plain TCP. */
static inline void moxy_conn_plain(moxy_conn_t *c, int fd)
{
    c->fd = fd;
    c->t = &moxy_transport_plain;
    c->ctx = NULL;
}

static inline ssize_t moxy_conn_read(moxy_conn_t *c, struct evbuffer *b, size_t max)
{
    return c->t->read(c, b, max);
}

static inline ssize_t moxy_conn_recv(moxy_conn_t *c, void *p, size_t len)
{
    return c->t->recv(c, p, len);
}

static inline ssize_t moxy_conn_write(moxy_conn_t *c, struct evbuffer *b)
{
    return c->t->write(c, b);
}

static inline ssize_t moxy_conn_send(moxy_conn_t *c, const void *p, size_t len)
{
    return c->t->send(c, p, len);
}

static inline int moxy_conn_shutdown(moxy_conn_t *c)
{
    return c->t->shutdown(c);
}

static inline size_t moxy_conn_pending(const moxy_conn_t *c)
{
    return c->t->pending(c);
}

static inline int moxy_conn_sendfile(const moxy_conn_t *c)
{
    return (c->t->flags & MOXY_TRANSPORT_SENDFILE) != 0;
}

/* Close c (its transport's state and socket) unless it is closed already;
 * c->fd becomes -1. */
void moxy_conn_close(moxy_conn_t *c);

/* A non-blocking TCP (or unix) socket connecting to sa: MOXY_OK with c
 * holding it over plain TCP and *done 1 when it connected at once, 0 when
 * the connection is under way (wait until the socket is writable, then
 * moxy_conn_connected); MOXY_ERROR with errno. */
int moxy_conn_connect(moxy_conn_t *c, const struct sockaddr *sa, socklen_t salen, int *done);

/* After the socket became writable: MOXY_OK when c's connect succeeded,
 * MOXY_ERROR with errno when it failed. */
int moxy_conn_connected(moxy_conn_t *c);

#endif

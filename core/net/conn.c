/*
 * conn.c -- the plain transport and connecting; see conn.h.
 */
#include "net/conn.h"
#include "net/io.h"
#include "base/moxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t plain_read(moxy_conn_t *c, struct evbuffer *b, size_t max)
{
    return moxy_io_read(b, c->fd, max);
}

static ssize_t plain_recv(moxy_conn_t *c, void *p, size_t len)
{
    ssize_t n;
    do n = recv(c->fd, p, len, 0);
    while (n < 0 && errno == EINTR);
    return n;
}

static ssize_t plain_write(moxy_conn_t *c, struct evbuffer *b)
{
    ssize_t n;
    do n = evbuffer_write(b, c->fd);
    while (n < 0 && errno == EINTR);
    return n;
}

static ssize_t plain_send(moxy_conn_t *c, const void *p, size_t len)
{
    ssize_t n;
    do n = send(c->fd, p, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

static int plain_shutdown(moxy_conn_t *c)
{
    return shutdown(c->fd, SHUT_WR);
}

static size_t plain_pending(const moxy_conn_t *c)
{
    MOXY_UNUSED(c);
    return 0;
}

static void plain_close(moxy_conn_t *c)
{
    close(c->fd);
}

const moxy_transport_t moxy_transport_plain = {
    .name = "tcp",
    .flags = MOXY_TRANSPORT_SENDFILE,
    .read = plain_read,
    .recv = plain_recv,
    .write = plain_write,
    .send = plain_send,
    .shutdown = plain_shutdown,
    .pending = plain_pending,
    .close = plain_close,
};

void moxy_conn_close(moxy_conn_t *c)
{
    if (c->fd < 0) return;
    c->t->close(c);
    c->fd = -1;
    c->ctx = NULL;
}

int moxy_conn_connect(moxy_conn_t *c, const struct sockaddr *sa, socklen_t salen, int *done)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return MOXY_ERROR;
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    int rc;
    do rc = connect(fd, sa, salen);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return MOXY_ERROR;
    }
    moxy_conn_plain(c, fd);
    *done = rc == 0;
    return MOXY_OK;
}

int moxy_conn_connected(moxy_conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return MOXY_ERROR;
    if (err) {
        errno = err;
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

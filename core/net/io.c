/*
 * io.c -- socket reads into evbuffers; see io.h.
 */
#include "net/io.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

ssize_t moxy_io_read(struct evbuffer *b, int fd, size_t max)
{
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(b, (ev_ssize_t)max, v, 2);
    if (n <= 0) {
        errno = ENOMEM;
        return -1;
    }
    /* reserve_space may give more room than asked: read no more than max */
    size_t room = 0;
    for (int i = 0; i < n; i++) {
        if (room + v[i].iov_len > max) v[i].iov_len = max - room;
        room += v[i].iov_len;
    }
    ssize_t r;
    do {
        r = n == 1 ? recv(fd, v[0].iov_base, v[0].iov_len, 0) : readv(fd, (struct iovec *)v, n);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        int saved = errno;
        evbuffer_commit_space(b, v, 0);
        errno = saved;
        return r;
    }
    size_t left = (size_t)r;
    for (int i = 0; i < n; i++) {
        if (v[i].iov_len > left) v[i].iov_len = left;
        left -= v[i].iov_len;
    }
    evbuffer_commit_space(b, v, n);
    return r;
}

void moxy_io_move(struct evbuffer *dst, struct evbuffer *src, size_t n)
{
    if (n < MOXY_IO_COPY_MAX) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(src, (ev_ssize_t)n, NULL, &v, 1) == 1 && v.iov_len >= n) {
            evbuffer_add(dst, v.iov_base, n);
            evbuffer_drain(src, n);
            return;
        }
    }
    evbuffer_remove_buffer(src, dst, n);
}

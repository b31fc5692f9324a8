/*
 * io.h -- socket reads into evbuffers.
 *
 * libevent 2.1's evbuffer_read() asks FIONREAD first and then reads at most
 * 4096 bytes (EVBUFFER_MAX_READ): two syscalls per 4 KiB, which made a 1 MiB
 * body cost 512 syscalls.  moxy_io_read reserves the space itself and reads
 * up to max bytes with one readv.
 */
#ifndef MOXY_IO_H
#define MOXY_IO_H

#include "net/event_mem.h"

#include <event2/buffer.h>
#include <sys/types.h>

/* Read up to max bytes from fd into the end of b.  Returns the bytes read,
 * 0 at end of stream, -1 with errno set (EAGAIN when nothing is there). */
ssize_t moxy_io_read(struct evbuffer *b, int fd, size_t max);

/* Read sizes adapt to the stream: a read that fills its buffer doubles the
 * next one (up to MOXY_IO_READ_MAX), one that fills less than a quarter
 * halves it (down to MOXY_IO_READ_MIN).  Big reads halve the syscalls and
 * the ACKs of a fast transfer; small ones keep a trickle from pinning big
 * buffers. */
#define MOXY_IO_READ_MIN 16384
#define MOXY_IO_READ_MAX (256 * 1024)

/* The next read size after a read of size cur returned got bytes. */
static inline size_t moxy_io_next_size(size_t cur, ssize_t got)
{
    if (got >= (ssize_t)cur && cur < MOXY_IO_READ_MAX) return cur * 2;
    if (got >= 0 && (size_t)got < cur / 4 && cur > MOXY_IO_READ_MIN) return cur / 2;
    return cur;
}

/* How much to read now with a read size of cur: cur, but MOXY_IO_READ_MIN
 * while buffers are over limits.buffer_memory. */
static inline size_t moxy_io_read_size(size_t cur)
{
    return moxy_event_mem_over() ? MOXY_IO_READ_MIN : cur;
}

/* Move n bytes from the front of src to the end of dst.  Whole buffers are
 * handed over without copying; a small piece (under MOXY_IO_COPY_MAX) is
 * copied, so a trickle of small reads cannot pile up big, mostly empty
 * buffers in dst.  A small piece must be memory, not a file segment. */
#define MOXY_IO_COPY_MAX 4096
void moxy_io_move(struct evbuffer *dst, struct evbuffer *src, size_t n);

#endif

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

#include <event2/buffer.h>
#include <sys/types.h>

/* Read up to max bytes from fd into the end of b.  Returns the bytes read,
 * 0 at end of stream, -1 with errno set (EAGAIN when nothing is there). */
ssize_t moxy_io_read(struct evbuffer *b, int fd, size_t max);

#endif

/*
 * moxy.h -- definitions every file of the core shares: status codes, the
 * version, small string helpers.  Include this first.
 */
#ifndef MOXY_H
#define MOXY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define MOXY_VERSION "0.1.0"

/* One return-code set for the whole core (as nginx's NGX_OK ...). */
#define MOXY_OK 0
#define MOXY_ERROR -1
#define MOXY_AGAIN -2     /* not finished, call again when the event fires */
#define MOXY_DECLINED -3  /* nothing done: the caller goes on */
#define MOXY_DONE -4      /* finished early (e.g. a hook answered the request) */

#define MOXY_UNUSED(x) ((void)(x))
#define MOXY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MOXY_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOXY_MAX(a, b) ((a) > (b) ? (a) : (b))

/* A byte string that does not own its bytes. */
typedef struct {
    const char *data;
    size_t len;
} moxy_str_t;

#define MOXY_STR(s) ((moxy_str_t){(s), sizeof(s) - 1})

/* ASCII case-insensitive comparison of a with the n bytes at b; 1 when equal. */
static inline int moxy_strieq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return 0;
    for (size_t i = 0; i < alen; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if ((unsigned)(x - 'A') < 26u) x |= 0x20;
        if ((unsigned)(y - 'A') < 26u) y |= 0x20;
        if (x != y) return 0;
    }
    return 1;
}

#define MOXY_STRIEQ_LIT(p, n, lit) moxy_strieq((p), (n), (lit), sizeof(lit) - 1)

#endif

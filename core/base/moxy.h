/*
 * moxy.h -- definitions every file of the core shares: status codes, the
 * version, small string helpers.  Include this first.
 */
#ifndef MOXY_H
#define MOXY_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>

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

/* 1 when the n bytes at p equal the lowercase literal lit of length n,
 * ignoring ASCII case in p.  lit holds only lowercase letters, digits and
 * '-', for which (byte | 0x20) == lit byte is exact (a CR would pass for '-',
 * but callers compare header names and tokens, where CR cannot occur).
 * Eight bytes at a time: this runs for every header moxy looks at. */
static inline int moxy_strieq_lit(const char *p, size_t n, const char *lit, size_t litlen)
{
    if (n != litlen) return 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        memcpy(&a, p + i, 8);
        memcpy(&b, lit + i, 8);
        if ((a | 0x2020202020202020ull) != b) return 0;
    }
    for (; i < n; i++)
        if (((unsigned char)p[i] | 0x20) != (unsigned char)lit[i]) return 0;
    return 1;
}

/* 1 when a and b are the same string or both NULL (optional settings). */
static inline int moxy_str_same(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* 1 when a socket call (accept, socket, connect) failed for want of a
 * resource of moxy's own -- a descriptor, socket memory -- rather than for
 * anything of the peer's: errno EMFILE, ENFILE, ENOBUFS or ENOMEM. */
static inline int moxy_errno_own_shortage(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Seconds (a configuration duration) as a struct timeval. */
static inline struct timeval moxy_timeval(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* Milliseconds of the coarse monotonic clock (a few ms of resolution, a
 * vDSO read): deadlines, ejections, budgets -- never a measured interval
 * (that is moxy_mono_us: a 2 ms answer must not log as 0 or 4 ms). */
static inline long long moxy_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Microseconds of the monotonic clock (precise): intervals to measure --
 * requests, tries, connects, the EWMA's samples, what logs and metrics say. */
static inline long long moxy_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The next number of the xorshift128+ generator whose state is s (not zero). */
static inline uint64_t moxy_rng_next(uint64_t s[2])
{
    uint64_t x = s[0], y = s[1];
    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}

#define MOXY_STRIEQ_LIT(p, n, lit) moxy_strieq_lit((p), (n), (lit), sizeof(lit) - 1)

#endif

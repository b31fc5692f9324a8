/*
 * siphash.c -- SipHash-1-3 and the process's hash key (see siphash.h).
 */
#include "base/siphash.h"

#include <errno.h>
#include <openssl/rand.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Set once, by seed_key before main(); read-only afterwards. */
static uint64_t process_key[2];

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* The 8 bytes at p, little-endian whatever the host's order. */
static uint64_t load_le64(const unsigned char *p)
{
    uint64_t m = 0;
    for (int i = 7; i >= 0; i--) m = m << 8 | p[i];
    return m;
}

uint64_t moxy_siphash13(const uint64_t key[2], const void *p, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ key[0];
    uint64_t v1 = 0x646f72616e646f6dull ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ key[0];
    uint64_t v3 = 0x7465646279746573ull ^ key[1];
    const unsigned char *in = p;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(in + i);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++) b |= (uint64_t)in[whole + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t moxy_hash_keyed(const void *p, size_t len)
{
    return moxy_siphash13(process_key, p, len);
}

/* The kernel's random bytes; without them (a kernel without getrandom, a
 * seccomp filter), OpenSSL's generator, which has its own sources.  Never
 * blocks for long: GRND_NONBLOCK first, as Python seeds its str hash, so
 * that a moxy started early in boot does not wait for the entropy pool. */
__attribute__((constructor)) static void seed_key(void)
{
    unsigned char k[16];
    ssize_t n;
    do n = getrandom(k, sizeof(k), GRND_NONBLOCK);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(k) && RAND_bytes(k, (int)sizeof(k)) != 1) {
        /* nothing random at all: the clock and addresses ASLR placed, weak
         * but different per process, and better than a constant */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t a = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&ts;
        uint64_t b = (uint64_t)ts.tv_sec * 0xbf58476d1ce4e5b9ull ^ (uint64_t)(uintptr_t)seed_key;
        memcpy(k, &a, 8);
        memcpy(k + 8, &b, 8);
    }
    process_key[0] = load_le64(k);
    process_key[1] = load_le64(k + 8);
}

/*
 * acl_lookup.c -- what a lookup in an access control list's prefix set
 * costs (core/base/prefix_set.c): build time, memory, and nanoseconds per
 * lookup for N random prefixes per family and 1,000,000 addresses.
 *
 *   make bench-acl                      (builds build/acl_lookup and runs it)
 *   build/acl_lookup [N [SEED]]         N prefixes per family (100000)
 *
 * Prefixes: as spec/02-core/prefix_set_test.c makes them -- half fresh
 * (IPv4 /8../32, IPv6 /16../128, a few shorter), nearly half nested in an
 * earlier one, some duplicates -- with values 0..999.  Addresses: uniform
 * ones (mostly outside the longer prefixes) and ones inside a random prefix
 * (the deep ranges), 1,000,000 of each, made before the clock starts.
 *
 * Two figures per case, medians of 5 passes:
 *   thru  lookups one after another with nothing between them: the CPU
 *         overlaps them (the rate of a batch);
 *   lat   each lookup's address depends on the previous result: one at a
 *         time, as a request makes its one lookup (closer to the cost seen
 *         per request, with the set warm in the cache).
 */
#include "base/prefix_set.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NADDR 1000000
#define PASSES 5

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Clear the bits of addr (size bytes) past bits. */
static void clear_host(uint8_t *addr, int size, int bits)
{
    for (int i = 0; i < size; i++) {
        int keep = bits - i * 8;
        if (keep <= 0)
            addr[i] = 0;
        else if (keep < 8)
            addr[i] &= (uint8_t)(0xff << (8 - keep));
    }
}

/* Set the bits of addr past bits to random ones. */
static void randomize_host(uint8_t *addr, int size, int bits)
{
    for (int i = 0; i < size; i++) {
        int keep = bits - i * 8;
        uint8_t r = (uint8_t)rnd();
        if (keep <= 0)
            addr[i] = r;
        else if (keep < 8)
            addr[i] = (uint8_t)((addr[i] & (0xff << (8 - keep))) | (r & (0xff >> keep)));
    }
}

static volatile int zero; /* 0, which the compiler cannot know */
static volatile long sink;

/* ns per lookup of the n addresses (size bytes each) at addrs. */
static double run(const moxy_prefix_set_t *s, int family, const uint8_t *addrs, int size, int n,
                  int dependent)
{
    double t[PASSES];
    for (int p = 0; p < PASSES; p++) {
        long sum = 0;
        double t0 = now_ns();
        if (dependent) {
            int r = 0, z = zero;
            for (int i = 0; i < n; i++) {
                r = moxy_prefix_set_lookup(s, family, addrs + (size_t)(i + (r & z)) * (size_t)size);
                sum += r;
            }
        } else {
            for (int i = 0; i < n; i++)
                sum += moxy_prefix_set_lookup(s, family, addrs + (size_t)i * (size_t)size);
        }
        t[p] = (now_ns() - t0) / n;
        sink = sum;
    }
    qsort(t, PASSES, sizeof(double), cmp_double);
    return t[PASSES / 2];
}

static void bench(int family, int n)
{
    int size = family == 4 ? 4 : 16, width = size * 8;
    moxy_cidr_t *p = malloc((size_t)n * sizeof(*p));
    if (!p) abort();
    for (int i = 0; i < n; i++) {
        int r = (int)(rnd() % 100);
        moxy_cidr_t *x = &p[i];
        const moxy_cidr_t *parent = i > 0 ? &p[rnd() % (uint64_t)i] : NULL;
        if (parent && r < 5) {
            *x = *parent;
        } else if (parent && r < 50 && parent->bits < width) {
            *x = *parent;
            int bits = parent->bits + 1 + (int)(rnd() % (uint64_t)(width - parent->bits));
            randomize_host(x->addr, size, parent->bits);
            clear_host(x->addr, size, bits);
            x->bits = (uint8_t)bits;
        } else {
            int short_max = family == 4 ? 7 : 15;
            int bits = rnd() % 100 < 2
                           ? (int)(rnd() % (uint64_t)(short_max + 1))
                           : short_max + 1 + (int)(rnd() % (uint64_t)(width - short_max));
            randomize_host(x->addr, size, 0);
            clear_host(x->addr, size, bits);
            x->family = (uint8_t)family;
            x->bits = (uint8_t)bits;
        }
        if (x->bits > width) x->bits = (uint8_t)width;
    }
    uint8_t *uniform = malloc((size_t)NADDR * (size_t)size),
            *inside = malloc((size_t)NADDR * (size_t)size);
    if (!uniform || !inside) abort();
    for (int i = 0; i < NADDR; i++) {
        randomize_host(uniform + (size_t)i * (size_t)size, size, 0);
        const moxy_cidr_t *x = &p[rnd() % (uint64_t)n];
        uint8_t *a = inside + (size_t)i * (size_t)size;
        memcpy(a, x->addr, (size_t)size);
        randomize_host(a, size, x->bits);
    }

    char err[256];
    double t0 = now_ns();
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    for (int i = 0; i < n; i++)
        if (moxy_prefix_set_add(b, &p[i], (int)(rnd() % 1000), err, sizeof(err)) != MOXY_OK) {
            fprintf(stderr, "acl_lookup: %s\n", err);
            exit(1);
        }
    double added = now_ns();
    moxy_prefix_set_t *s = moxy_prefix_set_build(b, err, sizeof(err));
    double built = now_ns();
    if (!s) {
        fprintf(stderr, "acl_lookup: %s\n", err);
        exit(1);
    }
    moxy_prefix_set_builder_free(b);
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    int f = family == 4 ? 0 : 1;
    int hits = 0;
    for (int i = 0; i < NADDR; i++)
        hits += moxy_prefix_set_lookup(s, family, inside + (size_t)i * (size_t)size) >= 0;

    printf("IPv%d  %d prefixes (%zu distinct), %zu ranges\n", family, n, st.prefixes[f],
           st.ranges[f]);
    printf("  build: %.1f ms (adds %.1f ms, build %.1f ms); set: %.2f MB (%.1f bytes per prefix)\n",
           (built - t0) / 1e6, (added - t0) / 1e6, (built - added) / 1e6, st.bytes / 1e6,
           (double)st.bytes / (double)st.prefixes[f]);
    printf("  lookup, uniform addresses:      %6.1f ns thru, %6.1f ns lat\n",
           run(s, family, uniform, size, NADDR, 0), run(s, family, uniform, size, NADDR, 1));
    printf("  lookup, inside a prefix (%3d%%): %6.1f ns thru, %6.1f ns lat\n", hits / (NADDR / 100),
           run(s, family, inside, size, NADDR, 0), run(s, family, inside, size, NADDR, 1));
    moxy_prefix_set_free(s);
    free(uniform);
    free(inside);
    free(p);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 100000;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 42;
    if (n < 1 || n > MOXY_PREFIX_SET_MAX) {
        fprintf(stderr, "usage: acl_lookup [N (1..%d) [SEED]]\n", MOXY_PREFIX_SET_MAX);
        return 2;
    }
    rng_state = seed;
    printf("acl_lookup: %d prefixes per family, %d addresses, seed %llu, medians of %d passes\n", n,
           NADDR, (unsigned long long)seed, PASSES);
    bench(4, n);
    bench(6, n);
    return 0;
}

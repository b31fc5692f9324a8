/*
 * conn_limit_test.c -- core/net/conn_limit.c: keys (IPv4, IPv4-mapped,
 * IPv6 /64), the limit, and counts under threads.  Built and run by `make
 * ctest` (which `make test` runs); prints what failed and exits 1 when
 * anything did.
 *
 * Threads enter and leave places of a few shared addresses and many of
 * their own, all at once, refusals included; at the end every address's
 * count must be back to 0 (the table empty), and no key may ever have held
 * more places than its limit.
 */
#include "base/moxy.h"
#include "net/conn_limit.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static atomic_int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (atomic_fetch_add(&failures, 1) < 30) {                                             \
                fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                    \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void key6(moxy_conn_slot_t *s, const char *text)
{
    uint8_t a[16];
    if (inet_pton(AF_INET6, text, a) != 1) {
        fprintf(stderr, "bad address %s\n", text);
        return;
    }
    moxy_conn_limit_key(s, 6, a);
}

static void keys(void)
{
    moxy_conn_slot_t a, b;
    uint8_t v4[4] = {192, 0, 2, 1};
    char text[64];
    moxy_conn_limit_key(&a, 4, v4);
    key6(&b, "::ffff:192.0.2.1");
    CHECK(memcmp(a.key, b.key, 16) == 0, "IPv4-mapped IPv6 is its IPv4 address");
    moxy_conn_limit_text(&a, text, sizeof(text));
    CHECK(strcmp(text, "192.0.2.1") == 0, "text %s", text);
    key6(&a, "2001:db8:1:2::1");
    key6(&b, "2001:db8:1:2:ffff:ffff:ffff:ffff");
    CHECK(memcmp(a.key, b.key, 16) == 0, "one /64, one key");
    moxy_conn_limit_text(&a, text, sizeof(text));
    CHECK(strcmp(text, "2001:db8:1:2::/64") == 0, "text %s", text);
    key6(&b, "2001:db8:1:3::1");
    CHECK(memcmp(a.key, b.key, 16) != 0, "another /64, another key");
    key6(&b, "::2001:db8:1:2");
    CHECK(memcmp(a.key, b.key, 16) != 0, "not mapped: an IPv6 /64");
    CHECK(moxy_conn_limit_key(&a, 5, v4) == MOXY_ERROR, "another family");
}

static void limit(void)
{
    moxy_conn_slot_t s[4];
    uint8_t v4[4] = {198, 51, 100, 9};
    int open = 0;
    for (int i = 0; i < 4; i++) moxy_conn_limit_key(&s[i], 4, v4);
    CHECK(moxy_conn_limit_enter(&s[0], 0, &open) == MOXY_OK && !s[0].held, "limit 0: nothing counted");
    CHECK(moxy_conn_limit_tracked() == 0, "limit 0: no entry");
    CHECK(moxy_conn_limit_enter(&s[0], 2, &open) == MOXY_OK && s[0].held && open == 1, "first");
    CHECK(moxy_conn_limit_enter(&s[1], 2, &open) == MOXY_OK && s[1].held && open == 2, "second");
    CHECK(moxy_conn_limit_enter(&s[2], 2, &open) == MOXY_DECLINED && !s[2].held && open == 2, "third refused");
    CHECK(moxy_conn_limit_enter(&s[2], 1, &open) == MOXY_DECLINED, "a lowered limit: refused, the two stay");
    CHECK(moxy_conn_limit_tracked() == 1, "one address");
    moxy_conn_limit_leave(&s[2]); /* not held: nothing */
    moxy_conn_limit_leave(&s[0]);
    moxy_conn_limit_leave(&s[0]); /* twice: the second does nothing */
    CHECK(!s[0].held, "given back");
    CHECK(moxy_conn_limit_enter(&s[3], 2, &open) == MOXY_OK && open == 2, "a place freed");
    moxy_conn_limit_leave(&s[1]);
    moxy_conn_limit_leave(&s[3]);
    CHECK(moxy_conn_limit_tracked() == 0, "empty again");
}

#define THREADS 4
#define ROUNDS 20000
#define SHARED 3
#define LIMIT 5

static atomic_int peak[SHARED];
static atomic_int held_now[SHARED];

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    moxy_conn_slot_t mine[8], shared[SHARED][LIMIT];
    memset(shared, 0, sizeof(shared));
    memset(mine, 0, sizeof(mine));
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    for (int r = 0; r < ROUNDS; r++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int k = (int)(x % SHARED), j = (int)((x >> 8) % LIMIT);
        moxy_conn_slot_t *s = &shared[k][j];
        if (s->held) {
            atomic_fetch_sub(&held_now[k], 1);
            moxy_conn_limit_leave(s);
        } else {
            uint8_t a[4] = {203, 0, 113, (uint8_t)k};
            moxy_conn_limit_key(s, 4, a);
            if (moxy_conn_limit_enter(s, LIMIT, NULL) == MOXY_OK) {
                int n = atomic_fetch_add(&held_now[k], 1) + 1;
                int p = atomic_load(&peak[k]);
                while (n > p && !atomic_compare_exchange_weak(&peak[k], &p, n)) {}
            }
        }
        /* an address of this thread's own, a new one each round */
        moxy_conn_slot_t *m = &mine[r % 8];
        moxy_conn_limit_leave(m);
        uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, (uint8_t)id, (uint8_t)(r >> 16), (uint8_t)(r >> 8), (uint8_t)r};
        moxy_conn_limit_key(m, 6, a6);
        CHECK(moxy_conn_limit_enter(m, 1, NULL) == MOXY_OK, "own address %d/%d", id, r);
    }
    for (int i = 0; i < 8; i++) moxy_conn_limit_leave(&mine[i]);
    for (int k = 0; k < SHARED; k++)
        for (int j = 0; j < LIMIT; j++)
            if (shared[k][j].held) {
                atomic_fetch_sub(&held_now[k], 1);
                moxy_conn_limit_leave(&shared[k][j]);
            }
    return NULL;
}

static void threads(void)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    /* held_now is counted after enter and before leave: it may lag the
     * table, never lead it, so its peak bounds the table's from below */
    for (int k = 0; k < SHARED; k++) CHECK(atomic_load(&peak[k]) <= LIMIT, "peak %d", atomic_load(&peak[k]));
    CHECK(moxy_conn_limit_tracked() == 0, "%ld addresses left", moxy_conn_limit_tracked());
}

int main(void)
{
    keys();
    limit();
    threads();
    if (failures) {
        fprintf(stderr, "conn_limit_test: %d failure(s)\n", atomic_load(&failures));
        return 1;
    }
    printf("conn_limit_test: ok\n");
    return 0;
}

/*
 * coder_fuzz.c -- the content coders (codec/coder.c): gzip, br and zstd
 * decoded from untrusted bytes (what an origin sends), and encoded then
 * decoded back.
 *
 * An input is a selector byte, a piece-size byte, then the data.  The
 * selector's low two bits pick the coding (1 gzip, 2 br, 3 zstd; 0 all
 * three in turn); bit 2: round trip instead of decoding the data; bits
 * 3..7: level and window.  The data goes to the coder in pieces of the
 * chosen size, MORE, FLUSH or END as the piece's position says.
 *
 * Invariants: decoding never crashes nor reads past the input; the guard
 * holds (the output never passes max_size by more than one output piece,
 * nor the ratio past 1 MiB); a round trip gives the data back exactly;
 * every byte the libraries allocated is freed when the set is (its
 * memory count returns to zero).
 */
#include "fuzz.h"
#include "base/moxy.h"
#include "codec/coder.h"

#include <assert.h>
#include <event2/buffer.h>

#define MAX_OUT (4u << 20)

/* Feed c the data in pieces of step bytes (the last with END); out gets
 * what it makes.  The coder's status. */
static int feed(moxy_coder_t *c, const uint8_t *data, size_t size, size_t step, unsigned sel, struct evbuffer *out)
{
    const char *why = NULL;
    size_t off = 0;
    int rc = MOXY_OK, k = 0;
    do {
        size_t n = size - off < step ? size - off : step;
        int last = off + n == size;
        int what = last ? MOXY_CODE_END : ((sel >> (k++ % 8)) & 1) ? MOXY_CODE_FLUSH : MOXY_CODE_MORE;
        rc = moxy_coder_run(c, (const char *)data + off, n, what, out, &why);
        off += n;
        if (rc != MOXY_OK) {
            assert(why && *why);
            break;
        }
    } while (off < size);
    return rc;
}

static void one(int enc, unsigned sel, size_t step, const uint8_t *data, size_t size)
{
    moxy_coders_t *cs = moxy_coders_new(64u << 20);
    assert(cs);
    struct evbuffer *out = evbuffer_new();
    const char *why = NULL;
    moxy_dec_limits_t lim = {MAX_OUT, 100};
    if (sel & 4) { /* round trip */
        static const int levels[4][4] = {{0}, {1, 4, 6, 9}, {0, 2, 4, 7}, {1, 3, 5, 9}};
        static const int windows[4][4] = {{0}, {9, 10, 12, 15}, {10, 12, 16, 18}, {10, 12, 17, 20}};
        moxy_enc_params_t p = {levels[enc][(sel >> 3) & 3], windows[enc][(sel >> 5) & 3], 1 + (int)((sel >> 5) & 7)};
        uint64_t hint = (sel & 0x80) ? size : UINT64_MAX;
        moxy_coder_t *c = moxy_coder_encoder(cs, enc, &p, hint, &why);
        assert(c);
        assert(feed(c, data, size, step, sel, out) == MOXY_OK);
        moxy_coders_set_budget(cs, 1); /* past it: put frees */
        moxy_coder_put(c);
        assert(moxy_coders_memory(cs) == 0);
        moxy_coders_set_budget(cs, 64u << 20);
        size_t n = evbuffer_get_length(out);
        uint8_t *coded = malloc(n + 1);
        evbuffer_remove(out, coded, n);
        moxy_coder_t *d = moxy_coder_decoder(cs, enc, &lim, &why);
        assert(d);
        int rc = feed(d, coded, n, step, sel >> 1, out);
        assert(rc == MOXY_OK);
        assert(evbuffer_get_length(out) == size);
        assert(size == 0 || memcmp(evbuffer_pullup(out, -1), data, size) == 0);
        moxy_coders_set_budget(cs, 1);
        moxy_coder_put(d);
        assert(moxy_coders_memory(cs) == 0);
        free(coded);
    } else {
        moxy_coder_t *d = moxy_coder_decoder(cs, enc, &lim, &why);
        assert(d);
        int rc = feed(d, data, size, step, sel, out);
        size_t n = evbuffer_get_length(out);
        assert(n <= MAX_OUT + 16384);
        if (rc == MOXY_OK) assert(n <= (1u << 20) || n <= (double)size * 100 + 16384);
        moxy_coders_set_budget(cs, 1);
        moxy_coder_put(d);
        assert(moxy_coders_memory(cs) == 0);
    }
    evbuffer_free(out);
    moxy_coders_free(cs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = fuzz_take_byte(&data, &size);
    size_t step = 1 + fuzz_take_byte(&data, &size) * 64;
    uint8_t *in = malloc(size ? size : 1); /* exactly size bytes */
    memcpy(in, data, size);
    if (sel & 3) {
        one((int)(sel & 3), sel, step, in, size);
    } else {
        for (int e = 1; e < MOXY_ENC_COUNT; e++) one(e, sel, step, in, size);
    }
    free(in);
    return 0;
}

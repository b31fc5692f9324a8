/*
 * fleet_fuzz.c -- the fleet's message parser (base/fleet_msg.c): what
 * anyone who can PUBLISH on the fleet's Redis channel hands every node.
 *
 * An input is a message as it comes off the channel.  Invariants: nothing
 * reads past the input (it sits in an allocation of its exact size); a
 * message taken has a known kind, its fields inside the input and within
 * their bounds, arg2 exactly for dict_delete; written again by
 * moxy_fleet_msg_encode with its own fields, an unsigned message gives the
 * input back byte for byte (one way to write each message), and a signed
 * one the same bytes up to its signature; a message encoded under a secret
 * verifies under it and not under another, nor when a byte of it changes;
 * verification of the input under a fixed secret never crashes.
 */
#include "fuzz.h"
#include "base/fleet_msg.h"

#include <assert.h>

static const char SECRET[] = "fuzz-secret-0123456789abcdef";

static int inside(const moxy_str_t *s, const char *p, size_t len)
{
    return s->len == 0 || (s->data >= p && s->data + s->len <= p + len);
}

static uint64_t hex64(const moxy_str_t *s)
{
    uint64_t v = 0;
    for (size_t i = 0; i < s->len; i++) {
        char c = s->data[i];
        v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = malloc(size ? size : 1);
    if (!p) abort();
    memcpy(p, data, size);
    moxy_fleet_msg_t m;
    int why = 0;
    int rc = moxy_fleet_msg_parse(p, size, &m, &why);
    if (rc != MOXY_OK) {
        assert(why == MOXY_FLEET_E_MALFORMED || why == MOXY_FLEET_E_TOO_LARGE);
        assert(why != MOXY_FLEET_E_TOO_LARGE || size > MOXY_FLEET_MSG_MAX);
        free(p);
        return 0;
    }
    assert(size <= MOXY_FLEET_MSG_MAX);
    assert(m.kind >= MOXY_FLEET_PURGE && m.kind <= MOXY_FLEET_DICT_FLUSH);
    assert(inside(&m.node, p, size) && inside(&m.nonce, p, size) && inside(&m.arg1, p, size) &&
           inside(&m.arg2, p, size) && inside(&m.sig, p, size));
    assert(m.node.len >= 1 && m.node.len <= MOXY_FLEET_NODE_MAX);
    assert(m.nonce.len == 16);
    assert(m.arg1.len >= 1 && m.arg1.len <= MOXY_FLEET_ARG_MAX && m.arg2.len <= MOXY_FLEET_ARG_MAX);
    assert((m.kind == MOXY_FLEET_DICT_DELETE) == (m.arg2.len > 0));
    assert(m.sig.len == 0 || m.sig.len == MOXY_FLEET_SIG_HEX);
    assert(m.signed_len < size && m.ts_ms >= 0);
    (void)moxy_fleet_msg_verify(p, &m, SECRET, sizeof(SECRET) - 1);

    /* written again, unsigned: the same bytes up to the signature */
    size_t cap = MOXY_FLEET_MSG_MAX;
    char *out = malloc(cap);
    if (!out) abort();
    long n = moxy_fleet_msg_encode(out, cap, m.ts_ms, m.node.data, m.node.len, hex64(&m.nonce), m.kind,
                                   m.arg1.data, m.arg1.len, m.arg2.data, m.arg2.len, NULL, 0);
    assert(n >= 0); /* never larger than the input: the empty signature is the shortest */
    assert((size_t)n >= m.signed_len && memcmp(out, p, m.signed_len) == 0);
    if (m.sig.len == 0) assert((size_t)n == size && memcmp(out, p, size) == 0);

    /* signed under SECRET: verifies under it, not under another, not when a byte changes */
    n = moxy_fleet_msg_encode(out, cap, m.ts_ms, m.node.data, m.node.len, hex64(&m.nonce), m.kind, m.arg1.data,
                              m.arg1.len, m.arg2.data, m.arg2.len, SECRET, sizeof(SECRET) - 1);
    if (n >= 0) {
        moxy_fleet_msg_t s;
        assert(moxy_fleet_msg_parse(out, (size_t)n, &s, &why) == MOXY_OK);
        assert(s.kind == m.kind && s.ts_ms == m.ts_ms && s.arg1.len == m.arg1.len && s.arg2.len == m.arg2.len);
        assert(moxy_fleet_msg_verify(out, &s, SECRET, sizeof(SECRET) - 1) == 1);
        assert(moxy_fleet_msg_verify(out, &s, "another-secret-0123456789", 25) == 0);
        size_t at = (size_t)data[0] % s.signed_len;
        out[at] ^= 1;
        moxy_fleet_msg_t t;
        if (moxy_fleet_msg_parse(out, (size_t)n, &t, &why) == MOXY_OK)
            assert(moxy_fleet_msg_verify(out, &t, SECRET, sizeof(SECRET) - 1) == 0);
    }
    free(out);
    free(p);
    return 0;
}

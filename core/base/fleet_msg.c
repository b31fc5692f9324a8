/*
 * fleet_msg.c -- the fleet's messages: netstrings after a magic, an
 * HMAC-SHA256 at the end; see fleet_msg.h.
 */
#include "base/fleet_msg.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>

#define MAGIC "MXF1"
#define MAGIC_LEN 4

static const struct {
    const char *name;
    size_t len;
} kinds[] = {
    [MOXY_FLEET_PURGE] = {"purge", 5},
    [MOXY_FLEET_PURGE_PREFIX] = {"purge_prefix", 12},
    [MOXY_FLEET_DICT_DELETE] = {"dict_delete", 11},
    [MOXY_FLEET_DICT_FLUSH] = {"dict_flush", 10},
};

const char *moxy_fleet_kind_name(int kind)
{
    return kind >= MOXY_FLEET_PURGE && kind <= MOXY_FLEET_DICT_FLUSH ? kinds[kind].name : "?";
}

/* --- writing --- */

typedef struct {
    char *p;
    size_t len, cap;
    int over;
} out_t;

static void put(out_t *o, const void *s, size_t n)
{
    if (o->over || n > o->cap - o->len) {
        o->over = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void put_ns(out_t *o, const char *s, size_t n)
{
    char head[24];
    int h = snprintf(head, sizeof(head), "%zu:", n);
    put(o, head, (size_t)h);
    put(o, s, n);
    put(o, ",", 1);
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

/* HMAC-SHA256 of the n bytes at p under secret, as 64 hex digits into out. */
static int sign(const char *secret, size_t slen, const char *p, size_t n, char out[MOXY_FLEET_SIG_HEX])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)slen, (const unsigned char *)p, n, mac, &maclen) || maclen != 32)
        return MOXY_ERROR;
    hex(mac, 32, out);
    return MOXY_OK;
}

long moxy_fleet_msg_encode(char *buf, size_t cap, long long ts_ms, const char *node, size_t nlen, uint64_t nonce,
                           int kind, const char *a1, size_t a1len, const char *a2, size_t a2len, const char *secret,
                           size_t slen)
{
    if (kind < MOXY_FLEET_PURGE || kind > MOXY_FLEET_DICT_FLUSH || nlen == 0 || nlen > MOXY_FLEET_NODE_MAX ||
        a1len == 0 || a1len > MOXY_FLEET_ARG_MAX || a2len > MOXY_FLEET_ARG_MAX || slen > 0x7fffffff)
        return -1;
    out_t o = {buf, 0, cap < MOXY_FLEET_MSG_MAX ? cap : MOXY_FLEET_MSG_MAX, 0};
    char num[32];
    put(&o, MAGIC, MAGIC_LEN);
    put_ns(&o, num, (size_t)snprintf(num, sizeof(num), "%lld", ts_ms < 0 ? 0 : ts_ms));
    put_ns(&o, node, nlen);
    put_ns(&o, num, (size_t)snprintf(num, sizeof(num), "%016llx", (unsigned long long)nonce));
    put_ns(&o, kinds[kind].name, kinds[kind].len);
    put_ns(&o, a1, a1len);
    put_ns(&o, a2 ? a2 : "", a2 ? a2len : 0);
    if (o.over) return -1;
    char sig[MOXY_FLEET_SIG_HEX];
    if (slen > 0) {
        if (sign(secret, slen, buf, o.len, sig) != MOXY_OK) return -1;
        put_ns(&o, sig, sizeof(sig));
    } else {
        put_ns(&o, "", 0);
    }
    return o.over ? -1 : (long)o.len;
}

/* --- reading --- */

/* The netstring at p[*at..len) into *s, *at past it.  MOXY_ERROR: not one,
 * or longer than max. */
static int get_ns(const char *p, size_t len, size_t *at, size_t max, moxy_str_t *s)
{
    size_t i = *at, n = 0, digits = 0;
    while (i < len && p[i] >= '0' && p[i] <= '9') {
        if (digits == 0 && p[i] == '0' && i + 1 < len && p[i + 1] != ':') return MOXY_ERROR; /* leading zero */
        if (++digits > 5) return MOXY_ERROR;
        n = n * 10 + (size_t)(p[i] - '0');
        i++;
    }
    if (digits == 0 || i >= len || p[i] != ':') return MOXY_ERROR;
    i++;
    if (n > max || n > len - i || len - i - n < 1 || p[i + n] != ',') return MOXY_ERROR;
    s->data = p + i;
    s->len = n;
    *at = i + n + 1;
    return MOXY_OK;
}

static int is_hex(const moxy_str_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        char c = s->data[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

int moxy_fleet_msg_parse(const char *p, size_t len, moxy_fleet_msg_t *m, int *why)
{
    memset(m, 0, sizeof(*m));
    *why = MOXY_FLEET_E_MALFORMED;
    if (len > MOXY_FLEET_MSG_MAX) {
        *why = MOXY_FLEET_E_TOO_LARGE;
        return MOXY_ERROR;
    }
    if (len < MAGIC_LEN || memcmp(p, MAGIC, MAGIC_LEN) != 0) return MOXY_ERROR;
    size_t at = MAGIC_LEN;
    moxy_str_t ts, kind;
    if (get_ns(p, len, &at, 19, &ts) != MOXY_OK || ts.len == 0) return MOXY_ERROR;
    if (ts.len > 1 && ts.data[0] == '0') return MOXY_ERROR; /* one way to write a number */
    long long t = 0;
    for (size_t i = 0; i < ts.len; i++) {
        if (ts.data[i] < '0' || ts.data[i] > '9') return MOXY_ERROR;
        if (t > (0x7fffffffffffffffLL - 9) / 10) return MOXY_ERROR;
        t = t * 10 + (ts.data[i] - '0');
    }
    m->ts_ms = t;
    if (get_ns(p, len, &at, MOXY_FLEET_NODE_MAX, &m->node) != MOXY_OK || m->node.len == 0) return MOXY_ERROR;
    if (get_ns(p, len, &at, 16, &m->nonce) != MOXY_OK || m->nonce.len != 16 || !is_hex(&m->nonce))
        return MOXY_ERROR;
    if (get_ns(p, len, &at, 16, &kind) != MOXY_OK) return MOXY_ERROR;
    for (int k = MOXY_FLEET_PURGE; k <= MOXY_FLEET_DICT_FLUSH; k++)
        if (kind.len == kinds[k].len && memcmp(kind.data, kinds[k].name, kind.len) == 0) m->kind = k;
    if (!m->kind) return MOXY_ERROR;
    if (get_ns(p, len, &at, MOXY_FLEET_ARG_MAX, &m->arg1) != MOXY_OK || m->arg1.len == 0) return MOXY_ERROR;
    if (get_ns(p, len, &at, MOXY_FLEET_ARG_MAX, &m->arg2) != MOXY_OK) return MOXY_ERROR;
    if ((m->kind == MOXY_FLEET_DICT_DELETE) != (m->arg2.len > 0)) return MOXY_ERROR;
    m->signed_len = at;
    if (get_ns(p, len, &at, MOXY_FLEET_SIG_HEX, &m->sig) != MOXY_OK) return MOXY_ERROR;
    if ((m->sig.len != 0 && m->sig.len != MOXY_FLEET_SIG_HEX) || !is_hex(&m->sig)) return MOXY_ERROR;
    if (at != len) return MOXY_ERROR; /* nothing after the signature */
    *why = 0;
    return MOXY_OK;
}

int moxy_fleet_msg_verify(const char *p, const moxy_fleet_msg_t *m, const char *secret, size_t slen)
{
    if (slen == 0 || m->sig.len != MOXY_FLEET_SIG_HEX) return 0;
    char want[MOXY_FLEET_SIG_HEX];
    if (sign(secret, slen, p, m->signed_len, want) != MOXY_OK) return 0;
    return CRYPTO_memcmp(want, m->sig.data, MOXY_FLEET_SIG_HEX) == 0;
}

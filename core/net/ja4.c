/*
 * ja4.c -- the JA4 fingerprint of a ClientHello; see ja4.h.
 *
 * One pass over the message checks its framing and keeps what JA4 needs
 * in arrays on the stack (bounded in ja4.h); then the two lists are
 * sorted, written out as the spec's text and hashed.
 */
#include "net/ja4.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0x0000
#define EXT_SIG_ALGS 0x000d
#define EXT_ALPN 0x0010
#define EXT_SUPPORTED_VERSIONS 0x002b
#define HASH_HEX 12
/* Text of a list: 4 hex and a comma (or the final '_' / NUL) per value. */
#define ITEM_CHARS 5

static const char HEX[] = "0123456789abcdef";

/* SHA-256 fetched once: EVP_sha256() would look it up on every digest. */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256;

static void sha256_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* The unread rest of a vector: n bytes at p. */
typedef struct {
    const unsigned char *p;
    size_t n;
} rd_t;

/* The readers return 1, or 0 when the bytes are not there. */
static int rd_skip(rd_t *r, size_t n)
{
    if (r->n < n) return 0;
    r->p += n;
    r->n -= n;
    return 1;
}

static int rd_uint(rd_t *r, size_t bytes, size_t *v)
{
    if (r->n < bytes) return 0;
    *v = 0;
    for (size_t i = 0; i < bytes; i++)
        *v = *v << 8 | r->p[i];
    return rd_skip(r, bytes);
}

static int rd_u16(rd_t *r, unsigned *v)
{
    size_t x;
    if (!rd_uint(r, 2, &x)) return 0;
    *v = (unsigned)x;
    return 1;
}

/* A vector with a length of `bytes` bytes in front: *sub is its contents. */
static int rd_vec(rd_t *r, size_t bytes, rd_t *sub)
{
    size_t n;
    if (!rd_uint(r, bytes, &n) || r->n < n) return 0;
    sub->p = r->p;
    sub->n = n;
    return rd_skip(r, n);
}

/* RFC 8701: 0x0a0a, 0x1a1a ... 0xfafa. */
static int is_grease(unsigned v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

static int alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* The version's two characters, from the spec's table. */
static const char *version_name(unsigned v)
{
    switch (v) {
    case 0x0304:
        return "13";
    case 0x0303:
        return "12";
    case 0x0302:
        return "11";
    case 0x0301:
        return "10";
    case 0x0300:
        return "s3";
    case 0x0002:
        return "s2";
    case 0xfeff:
        return "d1";
    case 0xfefd:
        return "d2";
    case 0xfefc:
        return "d3";
    default:
        return "00";
    }
}

/* The first and last characters of the first protocol of the ALPN
 * extension's body e, into c[0..2); 0 when e is malformed.  No protocol,
 * or an empty first one: "00".  A first or last byte that is not ASCII
 * alphanumeric: the first and last characters of the value in hex. */
static int alpn_chars(rd_t e, char c[2])
{
    rd_t list, name;
    if (!rd_vec(&e, 2, &list) || e.n != 0) return 0;
    c[0] = c[1] = '0';
    int first = 1;
    while (list.n > 0) {
        if (!rd_vec(&list, 1, &name)) return 0;
        if (first && name.n > 0) {
            unsigned char a = name.p[0], z = name.p[name.n - 1];
            if (alnum(a) && alnum(z)) {
                c[0] = (char)a;
                c[1] = (char)z;
            } else {
                c[0] = HEX[a >> 4];
                c[1] = HEX[z & 0xf];
            }
        }
        first = 0;
    }
    return 1;
}

/* The highest non-GREASE version of the supported_versions body e into
 * *v (0 when there is none); 0 when e is malformed. */
static int top_version(rd_t e, unsigned *v)
{
    rd_t list;
    unsigned x;
    if (!rd_vec(&e, 1, &list) || e.n != 0 || list.n % 2 != 0) return 0;
    *v = 0;
    while (rd_u16(&list, &x))
        if (!is_grease(x) && x > *v) *v = x;
    return 1;
}

/* The non-GREASE signature algorithms of the signature_algorithms body e,
 * in their order, into sig[0..*n); 0 when e is malformed or has too many. */
static int sig_algs(rd_t e, uint16_t *sig, size_t *n)
{
    rd_t list;
    unsigned x;
    if (!rd_vec(&e, 2, &list) || e.n != 0 || list.n % 2 != 0) return 0;
    *n = 0;
    while (rd_u16(&list, &x)) {
        if (is_grease(x)) continue;
        if (*n == MOXY_JA4_MAX_SIGALGS) return 0;
        sig[(*n)++] = (uint16_t)x;
    }
    return 1;
}

/* Write v[0..n) as "xxxx,xxxx,...,xxxx" at s; returns the end. */
static char *put_list(char *s, const uint16_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i > 0) *s++ = ',';
        *s++ = HEX[v[i] >> 12];
        *s++ = HEX[(v[i] >> 8) & 0xf];
        *s++ = HEX[(v[i] >> 4) & 0xf];
        *s++ = HEX[v[i] & 0xf];
    }
    return s;
}

/* The first 12 hex characters of SHA-256(text[0..len)) at out; "0" x 12
 * when empty is set (the spec's mark for an empty list).  0 on failure. */
static int hash12(const char *text, size_t len, int empty, char *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    if (empty) {
        memset(out, '0', HASH_HEX);
        return 1;
    }
    pthread_once(&sha256_once, sha256_fetch);
    if (!sha256 || EVP_Digest(text, len, md, NULL, sha256, NULL) != 1) return 0;
    for (int i = 0; i < HASH_HEX / 2; i++) {
        out[2 * i] = HEX[md[i] >> 4];
        out[2 * i + 1] = HEX[md[i] & 0xf];
    }
    return 1;
}

int moxy_ja4(const unsigned char *msg, size_t len, char out[MOXY_JA4_LEN + 1])
{
    uint16_t ciphers[MOXY_JA4_MAX_CIPHERS], exts[MOXY_JA4_MAX_EXTENSIONS],
        sig[MOXY_JA4_MAX_SIGALGS];
    size_t nciphers = 0, nexts = 0, nsig = 0, counted_exts = 0;
    /* the text of one list, then of the other: room for either */
    char text[MOXY_MAX(MOXY_JA4_MAX_CIPHERS, MOXY_JA4_MAX_EXTENSIONS + MOXY_JA4_MAX_SIGALGS) *
              ITEM_CHARS];
    char fp[MOXY_JA4_LEN + 1];
    char alpn[2] = {'0', '0'};
    int sni = 0, seen_alpn = 0, seen_versions = 0, seen_sig = 0;
    unsigned version, x;
    size_t type;
    rd_t r = {msg, len}, body, sid, suites, comp, block = {NULL, 0};

    out[0] = '\0';
    if (!msg || !rd_uint(&r, 1, &type) || type != HS_CLIENT_HELLO || !rd_vec(&r, 3, &body) ||
        r.n != 0)
        return MOXY_ERROR;
    /* legacy_version, random, session_id, cipher_suites, compression_methods */
    if (!rd_u16(&body, &version) || !rd_skip(&body, 32) || !rd_vec(&body, 1, &sid) || sid.n > 32 ||
        !rd_vec(&body, 2, &suites) || suites.n % 2 != 0 || !rd_vec(&body, 1, &comp))
        return MOXY_ERROR;
    /* extensions: absent (an old client's hello ends here) or to the end */
    if (body.n > 0 && (!rd_vec(&body, 2, &block) || body.n != 0)) return MOXY_ERROR;

    while (rd_u16(&suites, &x)) {
        if (is_grease(x)) continue;
        if (nciphers == MOXY_JA4_MAX_CIPHERS) return MOXY_ERROR;
        ciphers[nciphers++] = (uint16_t)x;
    }

    while (block.n > 0) {
        rd_t data;
        if (!rd_u16(&block, &x) || !rd_vec(&block, 2, &data)) return MOXY_ERROR;
        if (is_grease(x)) continue;
        counted_exts++;
        switch (x) {
        case EXT_SERVER_NAME:
            sni = 1;
            continue; /* counted, not in the list */
        case EXT_ALPN:
            if (!seen_alpn && !alpn_chars(data, alpn)) return MOXY_ERROR;
            seen_alpn = 1;
            continue;
        case EXT_SUPPORTED_VERSIONS:
            if (!seen_versions && !top_version(data, &version)) return MOXY_ERROR;
            seen_versions = 1;
            break;
        case EXT_SIG_ALGS:
            if (!seen_sig && !sig_algs(data, sig, &nsig)) return MOXY_ERROR;
            seen_sig = 1;
            break;
        }
        if (nexts == MOXY_JA4_MAX_EXTENSIONS) return MOXY_ERROR;
        exts[nexts++] = (uint16_t)x;
    }

    qsort(ciphers, nciphers, sizeof(ciphers[0]), cmp_u16);
    qsort(exts, nexts, sizeof(exts[0]), cmp_u16);

    /* a: t, version, d/i, two counts, ALPN */
    const char *v = version_name(version);
    size_t nc = MOXY_MIN(nciphers, 99), ne = MOXY_MIN(counted_exts, 99);
    char *o = fp;
    *o++ = 't';
    *o++ = v[0];
    *o++ = v[1];
    *o++ = sni ? 'd' : 'i';
    *o++ = (char)('0' + nc / 10);
    *o++ = (char)('0' + nc % 10);
    *o++ = (char)('0' + ne / 10);
    *o++ = (char)('0' + ne % 10);
    *o++ = alpn[0];
    *o++ = alpn[1];
    *o++ = '_';

    /* b: the sorted ciphers */
    char *end = put_list(text, ciphers, nciphers);
    if (!hash12(text, (size_t)(end - text), nciphers == 0, o)) return MOXY_ERROR;
    o += HASH_HEX;
    *o++ = '_';

    /* c: the sorted extensions, then "_" and the signature algorithms as
     * they came, or nothing after the extensions when there are none */
    end = put_list(text, exts, nexts);
    if (nsig > 0) {
        *end++ = '_';
        end = put_list(end, sig, nsig);
    }
    if (!hash12(text, (size_t)(end - text), nexts == 0, o)) return MOXY_ERROR;
    o += HASH_HEX;
    *o = '\0';
    memcpy(out, fp, sizeof(fp));
    return MOXY_OK;
}

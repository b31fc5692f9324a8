/*
 * ja4_fuzz.c -- the JA4 fingerprint of a ClientHello (net/ja4.c).
 *
 * Input: a handshake message, as OpenSSL's msg_callback hands one over
 * (type, 3-byte length, body); real ClientHellos as seeds.
 *
 * Invariants (besides ASan, UBSan and LSan):
 *  - reads stay within the input (an exact-size copy);
 *  - MOXY_OK: the output has JA4's shape, t, a version of the spec's table,
 *    d/i, two 2-digit counts, two ALPN characters ([0-9A-Za-z]), then two
 *    12-hex hashes, 36 characters; MOXY_ERROR: the output is "";
 *  - the result equals a model's, written apart here (offsets instead of a
 *    cursor, an insertion sort, EVP_sha256()): same verdict, same string;
 *  - an accepted input less its last byte is refused (its length no longer
 *    agrees).
 * A violation aborts.
 */
#include "fuzz.h"
#include "net/ja4.h"

#include <openssl/evp.h>
#include <stdio.h>

/* --- the model --- */

static unsigned be(const uint8_t *p, size_t n)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int grease(unsigned v)
{
    static const unsigned g[16] = {0x0a0a, 0x1a1a, 0x2a2a, 0x3a3a, 0x4a4a, 0x5a5a, 0x6a6a, 0x7a7a,
                                   0x8a8a, 0x9a9a, 0xaaaa, 0xbaba, 0xcaca, 0xdada, 0xeaea, 0xfafa};
    for (int i = 0; i < 16; i++)
        if (g[i] == v) return 1;
    return 0;
}

/* Insertion of v into the ascending list l[0..*n) (C's side uses qsort). */
static void insert(uint16_t *l, size_t *n, unsigned v)
{
    size_t i = (*n)++;
    for (; i > 0 && l[i - 1] > v; i--)
        l[i] = l[i - 1];
    l[i] = (uint16_t)v;
}

/* "xxxx,xxxx" of l[0..n) at s; returns its length. */
static size_t list_text(char *s, const uint16_t *l, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(s + len, i ? ",%04x" : "%04x", l[i]);
    return len;
}

static void hash12(const char *s, size_t n, int empty, char *out)
{
    unsigned char md[32];
    if (empty) {
        memcpy(out, "000000000000", 12);
        return;
    }
    if (EVP_Digest(s, n, md, NULL, EVP_sha256(), NULL) != 1) abort();
    for (int i = 0; i < 6; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static int alnum(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* The fingerprint as the spec says it, or -1. */
static int model(const uint8_t *m, size_t len, char *fp)
{
    char text[(MOXY_JA4_MAX_EXTENSIONS + MOXY_JA4_MAX_SIGALGS) * 5 + 2];
    uint16_t ciphers[MOXY_JA4_MAX_CIPHERS], exts[MOXY_JA4_MAX_EXTENSIONS];
    if (len < 4 || m[0] != 1 || be(m + 1, 3) != len - 4) return -1;
    size_t i = 4, end = len;
    if (end - i < 2 + 32 + 1) return -1;
    unsigned version = be(m + i, 2);
    i += 34;
    size_t sid = m[i++];
    if (sid > 32 || end - i < sid + 2) return -1;
    i += sid;
    size_t cs = be(m + i, 2), cs_at = i + 2;
    i += 2;
    if (cs % 2 || end - i < cs + 1) return -1;
    i += cs;
    size_t comp = m[i++];
    if (end - i < comp) return -1;
    i += comp;
    size_t ext_at = i, ext_end = end; /* no extensions: an empty walk */
    if (i < end) {
        if (end - i < 2 || be(m + i, 2) != end - i - 2) return -1;
        ext_at = i + 2;
    }

    size_t nc = 0, ne = 0, nlist = 0;
    for (size_t k = 0; k < cs; k += 2) {
        unsigned c = be(m + cs_at + k, 2);
        if (grease(c)) continue;
        if (nc == MOXY_JA4_MAX_CIPHERS) return -1;
        insert(ciphers, &nc, c);
    }
    char cipher_text[MOXY_JA4_MAX_CIPHERS * 5];
    size_t cipher_len = list_text(cipher_text, ciphers, nc);

    /* extensions: first pass for framing, SNI, ALPN, versions, sig algs */
    int too_many = 0, sni = 0, have_alpn = 0, have_sv = 0, have_sig = 0;
    size_t alpn_at = 0, alpn_len = 0, sv_at = 0, sv_len = 0, sig_at = 0, sig_len = 0;
    for (size_t k = ext_at; k < ext_end;) {
        if (ext_end - k < 4) return -1;
        unsigned t = be(m + k, 2);
        size_t l = be(m + k + 2, 2);
        if (ext_end - k - 4 < l) return -1;
        size_t d = k + 4;
        k = d + l;
        if (grease(t)) continue;
        ne++;
        if (t == 0) sni = 1;
        if (t == 0x10 && !have_alpn++) alpn_at = d, alpn_len = l;
        if (t == 0x2b && !have_sv++) sv_at = d, sv_len = l;
        if (t == 0x0d && !have_sig++) sig_at = d, sig_len = l;
        if (t != 0 && t != 0x10) {
            if (nlist == MOXY_JA4_MAX_EXTENSIONS)
                too_many = 1;
            else
                insert(exts, &nlist, t);
        }
    }
    if (too_many) return -1;
    size_t tl = list_text(text, exts, nlist);

    char alpn[3] = "00";
    if (have_alpn) {
        if (alpn_len < 2 || be(m + alpn_at, 2) != alpn_len - 2) return -1;
        size_t first = 1;
        for (size_t k = alpn_at + 2; k < alpn_at + alpn_len;) {
            size_t pl = m[k];
            if (alpn_at + alpn_len - k - 1 < pl) return -1;
            if (first && pl > 0) {
                int a = m[k + 1], z = m[k + pl];
                if (alnum(a) && alnum(z))
                    alpn[0] = (char)a, alpn[1] = (char)z;
                else
                    alpn[0] = "0123456789abcdef"[a >> 4], alpn[1] = "0123456789abcdef"[z & 15];
            }
            first = 0;
            k += 1 + pl;
        }
    }
    if (have_sv) {
        if (sv_len < 1 || m[sv_at] != sv_len - 1 || (sv_len - 1) % 2) return -1;
        version = 0;
        for (size_t k = sv_at + 1; k < sv_at + sv_len; k += 2) {
            unsigned v = be(m + k, 2);
            if (!grease(v) && v > version) version = v;
        }
    }
    size_t nsig = 0;
    if (have_sig) {
        if (sig_len < 2 || be(m + sig_at, 2) != sig_len - 2 || sig_len % 2) return -1;
        for (size_t k = sig_at + 2; k < sig_at + sig_len; k += 2) {
            unsigned v = be(m + k, 2);
            if (grease(v)) continue;
            if (++nsig > MOXY_JA4_MAX_SIGALGS) return -1;
            tl += (size_t)sprintf(text + tl, nsig == 1 ? "_%04x" : ",%04x", v);
        }
    }

    const char *vs = "00";
    static const struct {
        unsigned v;
        const char *s;
    } table[] = {{0x0304, "13"}, {0x0303, "12"}, {0x0302, "11"}, {0x0301, "10"}, {0x0300, "s3"},
                 {0x0002, "s2"}, {0xfeff, "d1"}, {0xfefd, "d2"}, {0xfefc, "d3"}};
    for (size_t k = 0; k < sizeof(table) / sizeof(table[0]); k++)
        if (table[k].v == version) vs = table[k].s;
    sprintf(fp, "t%s%c%02zu%02zu%s_", vs, sni ? 'd' : 'i', nc > 99 ? 99 : nc, ne > 99 ? 99 : ne,
            alpn);
    hash12(cipher_text, cipher_len, nc == 0, fp + 11);
    fp[23] = '_';
    hash12(text, tl, nlist == 0, fp + 24);
    fp[36] = '\0';
    return 0;
}

/* --- the shape --- */

static int in(char c, const char *set)
{
    return c != '\0' && strchr(set, c) != NULL;
}

static int shaped(const char *s)
{
    static const char *const versions[] = {"13", "12", "11", "10", "s3",
                                           "s2", "d1", "d2", "d3", "00"};
    const char *digits = "0123456789", *hex = "0123456789abcdef";
    const char *alnums = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    if (strlen(s) != MOXY_JA4_LEN || s[0] != 't') return 0;
    int v = 0;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++)
        if (memcmp(s + 1, versions[i], 2) == 0) v = 1;
    if (!v || !in(s[3], "di")) return 0;
    for (int i = 4; i < 8; i++)
        if (!in(s[i], digits)) return 0;
    if (!in(s[8], alnums) || !in(s[9], alnums) || s[10] != '_' || s[23] != '_') return 0;
    for (int i = 11; i < 36; i++)
        if (i != 23 && !in(s[i], hex)) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *msg = (unsigned char *)fuzz_dup(data, size);
    char out[MOXY_JA4_LEN + 1], want[MOXY_JA4_LEN + 8];
    memset(out, 'x', sizeof(out));
    int rc = moxy_ja4(msg, size, out);
    if (rc == MOXY_OK) {
        if (!shaped(out)) abort();
    } else if (rc != MOXY_ERROR || out[0] != '\0') {
        abort();
    }
    int mrc = model(data, size, want);
    if ((rc == MOXY_OK) != (mrc == 0)) {
        fprintf(stderr, "ja4: rc %d, model %d (%s)\n", rc, mrc, mrc == 0 ? want : "-");
        abort();
    }
    if (rc == MOXY_OK && strcmp(out, want) != 0) {
        fprintf(stderr, "ja4: %s, model %s\n", out, want);
        abort();
    }
    free(msg);
    if (rc == MOXY_OK) {
        msg = (unsigned char *)fuzz_dup(data, size - 1);
        if (moxy_ja4(msg, size - 1, out) != MOXY_ERROR) abort();
        free(msg);
    }
    return 0;
}

/*
 * crypto.c -- moxy.crypto's C side on OpenSSL's EVP (see crypto.h).
 */
#include "api/crypto.h"
#include "base/moxy.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

static const EVP_MD *md_of(const char *alg)
{
    if (strcmp(alg, "sha256") == 0) return EVP_sha256();
    if (strcmp(alg, "sha384") == 0) return EVP_sha384();
    if (strcmp(alg, "sha512") == 0) return EVP_sha512();
    if (strcmp(alg, "sha1") == 0) return EVP_sha1();
    return NULL;
}

EXPORT int moxy_ffi_crypto_digest(const char *alg, const char *data, size_t len, unsigned char *out)
{
    const EVP_MD *md = md_of(alg);
    unsigned n = 0;
    if (!md || EVP_Digest(data, len, out, &n, md, NULL) != 1) return -1;
    return (int)n;
}

EXPORT int moxy_ffi_crypto_hmac(const char *alg, const char *key, size_t klen, const char *data, size_t len,
                                unsigned char *out)
{
    const EVP_MD *md = md_of(alg);
    unsigned n = 0;
    if (klen > INT32_MAX) return -1; /* HMAC takes the key's length as an int */
    if (!md || !HMAC(md, key, (int)klen, (const unsigned char *)data, len, out, &n)) return -1;
    return (int)n;
}

EXPORT int moxy_ffi_crypto_random(unsigned char *out, size_t n)
{
    return n <= INT32_MAX && RAND_bytes(out, (int)n) == 1 ? 0 : -1;
}

EXPORT int moxy_ffi_crypto_equal(const char *a, const char *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

EXPORT int moxy_ffi_crypto_b64_encode(const unsigned char *in, size_t len, char *out)
{
    if (len > (size_t)INT32_MAX / 4 * 3) return -1; /* the text's length must fit an int */
    return EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

EXPORT int moxy_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out)
{
    if (len > INT32_MAX) return -1; /* EVP_DecodeBlock counts in ints */
    /* the alphabet, and '=' only as the padding of a whole last group */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '+' ||
            ch == '/')
            continue;
        if (ch == '=' && len % 4 == 0 && i + 2 >= len && (i + 1 == len || in[len - 1] == '=')) continue;
        return -1;
    }
    /* EVP_DecodeBlock wants whole groups of 4: the padding is put back */
    char tail[4];
    size_t whole = len - len % 4, rest = len % 4, pad = 0;
    if (rest == 1) return -1;
    int n = whole ? EVP_DecodeBlock(out, (const unsigned char *)in, (int)whole) : 0;
    if (n < 0) return -1;
    if (whole >= 4) {
        /* EVP_DecodeBlock counts '=' padding as zero bytes */
        if (in[whole - 1] == '=') pad++;
        if (in[whole - 2] == '=') pad++;
        if (pad && rest) return -1; /* padding in the middle */
    }
    n -= (int)pad;
    if (rest) {
        memcpy(tail, in + whole, rest);
        memset(tail + rest, '=', 4 - rest);
        unsigned char last[3];
        int m = EVP_DecodeBlock(last, (const unsigned char *)tail, 4);
        if (m < 0) return -1;
        m -= (int)(4 - rest);
        memcpy(out + n, last, (size_t)m);
        n += m;
    }
    return n;
}

EXPORT moxy_pkey_t *moxy_ffi_crypto_pkey(const char *pem, size_t len, char *err, size_t errlen)
{
    BIO *b = len <= INT32_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    if (!k && b) { /* a certificate's key */
        (void)BIO_reset(b);
        X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (x) k = X509_get_pubkey(x);
        X509_free(x);
    }
    BIO_free(b);
    if (!k) {
        unsigned long code = ERR_peek_last_error();
        const char *r = code ? ERR_reason_error_string(code) : NULL;
        snprintf(err, errlen, "not a PEM public key or certificate%s%s", r ? ": " : "", r ? r : "");
    }
    ERR_clear_error();
    return k;
}

EXPORT void moxy_ffi_crypto_pkey_free(moxy_pkey_t *k)
{
    EVP_PKEY_free(k);
}

/* An ECDSA signature as JWS writes it (r||s, n bytes each) as DER. */
static unsigned char *ecdsa_der(const unsigned char *sig, size_t slen, int *dlen)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)(slen / 2), NULL), *s = BN_bin2bn(sig + slen / 2, (int)(slen / 2), NULL);
    unsigned char *der = NULL;
    if (es && r && s && ECDSA_SIG_set0(es, r, s)) {
        r = s = NULL; /* es has them */
        *dlen = i2d_ECDSA_SIG(es, &der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return *dlen > 0 ? der : NULL;
}

EXPORT int moxy_ffi_crypto_verify(const char *alg, moxy_pkey_t *key, const char *data, size_t len,
                                  const unsigned char *sig, size_t slen)
{
    if (strlen(alg) != 5) return -1;
    const EVP_MD *md = strcmp(alg + 2, "256") == 0 ? EVP_sha256()
                       : strcmp(alg + 2, "384") == 0 ? EVP_sha384()
                       : strcmp(alg + 2, "512") == 0 ? EVP_sha512()
                                                     : NULL;
    int type = EVP_PKEY_get_base_id(key);
    int rsa = (alg[0] == 'R' || alg[0] == 'P') && alg[1] == 'S', ec = alg[0] == 'E' && alg[1] == 'S';
    if (!md || (rsa && type != EVP_PKEY_RSA) || (ec && type != EVP_PKEY_EC) || (!rsa && !ec)) return -1;
    unsigned char *der = NULL;
    int dlen = 0;
    if (ec) {
        /* r||s of the curve's size: 64 bytes for P-256, 96 for P-384 */
        size_t want = (size_t)((EVP_PKEY_get_bits(key) + 7) / 8) * 2;
        if (slen != want) return 0;
        der = ecdsa_der(sig, slen, &dlen);
        if (!der) return 0;
        sig = der;
        slen = (size_t)dlen;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = ctx && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key) == 1;
    if (rc && alg[0] == 'P') {
        rc = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
    }
    rc = rc && EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)data, len) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    ERR_clear_error();
    return rc ? 1 : 0;
}

/*
 * crypto.h -- moxy.crypto: digests, HMACs, random bytes, base64 and
 * signature checks for scripts, on OpenSSL 3's EVP (the FFI exports of
 * lua/moxy/crypto.lua).  Enough to verify a JWT (HS256/384/512, RS256/384/
 * 512, PS256, ES256/384) in a few lines of Lua.  Every function is
 * thread-safe: workers call them at once.
 */
#ifndef MOXY_CRYPTO_H
#define MOXY_CRYPTO_H

#include <stddef.h>

/* BEGIN FFI lua/moxy/crypto.lua */
typedef struct evp_pkey_st moxy_pkey_t;

/* The digest alg ("sha1", "sha256", "sha384", "sha512") of the len bytes
 * at data into out (64 bytes of room): its length, or -1 for an unknown
 * algorithm. */
int moxy_ffi_crypto_digest(const char *alg, const char *data, size_t len, unsigned char *out);

/* HMAC with digest alg and key of the len bytes at data into out (64
 * bytes of room): its length, or -1 for an unknown algorithm. */
int moxy_ffi_crypto_hmac(const char *alg, const char *key, size_t klen, const char *data, size_t len,
                         unsigned char *out);

/* n bytes from OpenSSL's CSPRNG into out: 0, or -1. */
int moxy_ffi_crypto_random(unsigned char *out, size_t n);

/* 1 when the n bytes at a and b are equal, in time that does not depend on
 * where they differ. */
int moxy_ffi_crypto_equal(const char *a, const char *b, size_t n);

/* Base64 (standard alphabet, padded) of the len bytes at in into out
 * (4 * ((len + 2) / 3) + 1 bytes of room): the text's length, or -1 when
 * it would not fit an int. */
int moxy_ffi_crypto_b64_encode(const unsigned char *in, size_t len, char *out);

/* The bytes of base64 text (standard alphabet, padding optional, no
 * whitespace) into out (3 * (len / 4 + 1) bytes of room): their number,
 * or -1 when the text is not base64. */
int moxy_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out);

/* A public key from PEM (SubjectPublicKeyInfo, or a certificate), or NULL
 * with why in err (errlen bytes). */
moxy_pkey_t *moxy_ffi_crypto_pkey(const char *pem, size_t len, char *err, size_t errlen);

/* Let go of a key of moxy_ffi_crypto_pkey. */
void moxy_ffi_crypto_pkey_free(moxy_pkey_t *k);

/* Check the signature sig (slen bytes, as JWS writes it: PKCS#1 v1.5 for
 * RS*, PSS for PS*, r||s for ES*) of the len bytes at data with key and
 * alg (a JWS "alg" of a public-key kind).  1: valid; 0: not valid; -1: alg
 * unknown or not for this key. */
int moxy_ffi_crypto_verify(const char *alg, moxy_pkey_t *key, const char *data, size_t len,
                           const unsigned char *sig, size_t slen);
/* END FFI */

#endif

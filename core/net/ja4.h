/*
 * ja4.h -- the JA4 fingerprint of a TLS client (FoxIO's JA4, the client
 * part only: not JA4S, JA4H ...), computed from its ClientHello as
 * https://github.com/FoxIO-LLC/ja4/blob/main/technical_details/JA4.md
 * says, e.g. "t13d1516h2_8daaf6152771_e5627efa2ab1":
 *
 *   a  't' (TLS over TCP), the version (2 chars), 'd' with SNI or 'i',
 *      the counts of ciphers and of extensions (2 digits each, at most
 *      99), the first and last characters of the first ALPN value
 *   b  12 hex of the SHA-256 of the sorted ciphers
 *   c  12 hex of the SHA-256 of the sorted extensions but SNI and ALPN,
 *      then '_' and the signature algorithms in their order
 *
 * GREASE values (0x0a0a, 0x1a1a ... 0xfafa) count nowhere.  The input is
 * the handshake message alone, as OpenSSL's msg_callback hands over a
 * received one: no record header.  Pure function of its input; no
 * allocation of its own (EVP_Digest may allocate inside OpenSSL); any
 * thread.
 */
#ifndef MOXY_JA4_H
#define MOXY_JA4_H

#include "base/moxy.h"

#include <stddef.h>

/* The fingerprint's length, without its NUL: 10 + 1 + 12 + 1 + 12. */
#define MOXY_JA4_LEN 36

/* How many non-GREASE values of each list a fingerprint is computed for.
 * More is refused (MOXY_ERROR) rather than a hash of part of the list: no
 * real client comes near (OpenSSL offers at most 158 ciphers). */
#define MOXY_JA4_MAX_CIPHERS 256
#define MOXY_JA4_MAX_EXTENSIONS 128
#define MOXY_JA4_MAX_SIGALGS 128

/* The JA4 fingerprint of the ClientHello handshake message msg[0..len):
 * type 1, 3-byte length (exactly len - 4), then legacy_version, random,
 * session_id (at most 32 bytes), cipher_suites, compression_methods and,
 * optionally, extensions.  MOXY_OK: out holds the 36 characters and a NUL.
 * MOXY_ERROR (out is ""): not a ClientHello, or a malformed one (a vector
 * past its end, an odd cipher-suite length, bytes left over in the
 * message, the extension block or the ALPN, supported_versions or
 * signature_algorithms extension), or one over the bounds above.  Reads
 * only msg[0..len).
 *
 * Where the spec leaves room: an extension seen twice counts twice and its
 * first copy is the one read; supported_versions with only GREASE values
 * gives version "00"; the version table is the spec's, DTLS values ("d1",
 * "d2", "d3") included. */
int moxy_ja4(const unsigned char *msg, size_t len, char out[MOXY_JA4_LEN + 1]);

#endif

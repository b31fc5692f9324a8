/*
 * acl.h -- what moxy.acl needs from C (the FFI exports of
 * lua/moxy/acl.lua): prefix sets of client addresses (base/prefix_set.h)
 * built from lists and files, and password checks against crypt(3)
 * hashes (libcrypt: bcrypt, sha512crypt, yescrypt, ...) done on the
 * offload threads (http/offload.h), since one bcrypt check is tens of
 * milliseconds of CPU that a worker's loop must not spend.
 */
#ifndef MOXY_API_ACL_H
#define MOXY_API_ACL_H

#include <stddef.h>

/* BEGIN FFI lua/moxy/acl.lua */
typedef struct moxy_prefix_set_s moxy_prefix_set_t;

/* A set of the n CIDR blocks (cidrs[i], lens[i] bytes: "10.0.0.0/8",
 * "2001:db8::/32", a bare address) and of the blocks of the nfiles list
 * files (one block per line, # comments), each of value 1.  NULL: err
 * (errlen bytes) says why, naming the block or file:line. */
moxy_prefix_set_t *moxy_ffi_pset_new(const char **cidrs, const size_t *lens, int n, const char **files,
                                     int nfiles, char *err, size_t errlen);

/* Free s (its Lua object is collected). */
void moxy_ffi_pset_free(moxy_prefix_set_t *s);

/* 1 when the address ip (len bytes of text) is in s, 0 when not, -1 when
 * ip is not an address. */
int moxy_ffi_pset_match(const moxy_prefix_set_t *s, const char *ip, size_t len);

/* The distinct prefixes of s (IPv4 and IPv6) and the bytes it holds. */
void moxy_ffi_pset_info(const moxy_prefix_set_t *s, size_t *prefixes, size_t *bytes);

/* 1 when hash is a crypt(3) hash moxy checks (bcrypt $2b$/$2y$, yescrypt
 * $y$, sha512crypt $6$, sha256crypt $5$, ...); 0: unknown; -1: a weak,
 * legacy method (DES, MD5) that moxy refuses. */
int moxy_ffi_crypt_supported(const char *hash);

/* Check pass (plen bytes) against hash (a NUL-ended crypt(3) hash) on the
 * offload threads; the running hook then waits and is woken with true
 * (it matches) or false.  MOXY_OK: started; MOXY_DECLINED: no hook runs;
 * MOXY_ERROR: err says why (too many checks waiting). */
int moxy_ffi_crypt_check(const char *pass, size_t plen, const char *hash, char *err, size_t errlen);
/* END FFI */

#endif

/*
 * ffi.h -- the C functions Lua calls through LuaJIT's FFI (as lua-resty-core
 * does): the request pointer first, plain C types, an int status (MOXY_OK or
 * MOXY_ERROR / MOXY_DECLINED), results through out-parameters.  FFI calls are
 * compiled by the JIT; lua_CFunctions never are.
 *
 * Each block "BEGIN FFI <file>" ... "END FFI" lists what the ffi.cdef of that
 * Lua module declares: tools/check-ffi.lua (make lint, and a spec) compares
 * them.  Bump MOXY_FFI_ABI on any change.
 */
#ifndef MOXY_FFI_H
#define MOXY_FFI_H

#include <stddef.h>

#define MOXY_FFI_ABI 5

/* BEGIN FFI lua/moxy/txn.lua */
typedef struct moxy_req_s moxy_req_t;

/* The ABI version the Lua side must match. */
int moxy_ffi_abi_version(void);

/* A field of the request (MOXY_FFI_F_*): a pointer into request memory, valid
 * until the request ends.  MOXY_DECLINED when absent (e.g. no query). */
int moxy_ffi_req_field(moxy_req_t *r, int field, const char **out, size_t *len);

/* Value of the index-th (0-based) header called name, in the request
 * (which = 0) or response (which = 1) headers.  MOXY_DECLINED: none. */
int moxy_ffi_header_get(moxy_req_t *r, int which, const char *name, size_t nlen, int index,
                        const char **val, size_t *vlen);

/* Set (add = 0: replacing all of that name) or add (add = 1) a header.
 * MOXY_ERROR on an invalid name or value (CR, LF, NUL...). */
int moxy_ffi_header_set(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                        size_t vlen, int add);

/* Remove every header called name; returns how many were removed. */
int moxy_ffi_header_remove(moxy_req_t *r, int which, const char *name, size_t nlen);

/* The index-th header (0-based) of the list.  MOXY_DECLINED past the end. */
int moxy_ffi_header_at(moxy_req_t *r, int which, int index, const char **name, size_t *nlen,
                       const char **val, size_t *vlen);

/* Replace the request target with path (plen bytes, starting with '/') and,
 * when has_query, '?' and query (qlen bytes).  MOXY_ERROR on bytes that do
 * not belong in a request target (controls, space, '#', '?' in the path). */
int moxy_ffi_req_set_target(moxy_req_t *r, const char *path, size_t plen, const char *query,
                            size_t qlen, int has_query);

/* The response status (0 before there is one); with status > 0, first
 * change it (on_response): refused (returns the old one) for 1xx, 204 and
 * 304 either way, which would change whether the response has a body. */
int moxy_ffi_resp_status(moxy_req_t *r, int status);

/* Send the request to pool name.  MOXY_DECLINED: no such pool. */
int moxy_ffi_upstream_pick(moxy_req_t *r, const char *name, size_t len);

/* Answer the request with status and body (copied); the response headers
 * set so far go with it.  MOXY_ERROR: bad status. */
int moxy_ffi_respond(moxy_req_t *r, int status, const char *body, size_t len);

/* A number about the request (MOXY_FFI_N_*); -1 for an unknown one. */
double moxy_ffi_req_number(moxy_req_t *r, int which);

/* The client's port. */
int moxy_ffi_client_port(moxy_req_t *r);

/* Write msg (len bytes) to the error log at level (MOXY_LOG_*), with r's id
 * when r is not NULL.  MOXY_DECLINED when the level is not logged. */
int moxy_ffi_log(moxy_req_t *r, int level, const char *msg, size_t len);
/* END FFI */

/* Field numbers of moxy_ffi_req_field (also in txn.lua). */
enum {
    MOXY_FFI_F_METHOD = 0,
    MOXY_FFI_F_URI,
    MOXY_FFI_F_PATH,
    MOXY_FFI_F_QUERY,
    MOXY_FFI_F_HOST,
    MOXY_FFI_F_CLIENT_IP,
    MOXY_FFI_F_ID,
    MOXY_FFI_F_LISTENER,
    MOXY_FFI_F_VERSION,
    MOXY_FFI_F_POOL,
    MOXY_FFI_F_ERROR,
    MOXY_FFI_F_PEER,
};

/* Numbers of moxy_ffi_req_number. */
enum {
    MOXY_FFI_N_TRIES = 0, /* origin connections tried for this request */
    MOXY_FFI_N_STARTED,   /* when the request's first byte came, epoch seconds */
};

#endif

/*
 * coder.h -- content codings (RFC 9110 8.4.1) streamed: gzip (zlib), br
 * (libbrotli) and zstd (libzstd), to encode a response body as it flows
 * and to decode one for a client that cannot.
 *
 * A coder takes the body piece by piece and appends what it makes to an
 * evbuffer (written in place, no copy of its output).  Coders come from a
 * moxy_coders_t, one per worker thread: it counts the memory the libraries
 * allocate (their allocators are ours), refuses a new coder while that is
 * past its budget, and keeps a few finished coders for the next response
 * (a deflate or zstd context is reset, not made again: for zlib that saves
 * allocating and clearing ~256 KiB a response).
 */
#ifndef MOXY_CODER_H
#define MOXY_CODER_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* The codings moxy makes and reads. */
enum { MOXY_ENC_IDENTITY = 0, MOXY_ENC_GZIP, MOXY_ENC_BR, MOXY_ENC_ZSTD, MOXY_ENC_COUNT };

/* The token of enc ("gzip", "br", "zstd", "identity"). */
const char *moxy_enc_name(int enc);

/* The coding named by the token at s (n bytes, any case; "x-gzip" is
 * gzip), or -1. */
int moxy_enc_parse(const char *s, size_t n);

/* How an encoder compresses. */
typedef struct {
    int level;     /* gzip 1..9, br 0..11, zstd 1..19 */
    int window;    /* log2 of the window: gzip 9..15, br 10..24, zstd 10..27 */
    int mem_level; /* gzip only: zlib's memLevel 1..9 */
} moxy_enc_params_t;

/* A decoder's guard against bombs: the decoded body may not pass max_size
 * bytes, nor (past 1 MiB) max_ratio times what it was decoded from. */
typedef struct {
    uint64_t max_size;
    double max_ratio;
} moxy_dec_limits_t;

typedef struct moxy_coders_s moxy_coders_t;
typedef struct moxy_coder_s moxy_coder_t;

/* What moxy_coder_run does with its input. */
enum {
    MOXY_CODE_MORE = 0, /* more follows: the coder may keep what it has */
    MOXY_CODE_FLUSH,    /* more may follow, but what came so far goes out now */
    MOXY_CODE_END,      /* the body ends here */
};

/* A set of coders for one thread, budget bytes of codec memory (0: no
 * limit), or NULL (out of memory). */
moxy_coders_t *moxy_coders_new(size_t budget);

/* Change cs's budget (a reload). */
void moxy_coders_set_budget(moxy_coders_t *cs, size_t budget);

/* Free cs and the coders it keeps; every coder it gave must be put back. */
void moxy_coders_free(moxy_coders_t *cs);

/* The bytes cs's libraries hold now (coders in use and kept). */
size_t moxy_coders_memory(const moxy_coders_t *cs);

/* An encoder of enc (gzip, br or zstd) with params p for a body of size
 * bytes (UINT64_MAX: unknown; a known size lets small bodies use a smaller
 * window: same output, less memory).  NULL when cs is past its budget or
 * out of memory (*why says which). */
moxy_coder_t *moxy_coder_encoder(moxy_coders_t *cs, int enc, const moxy_enc_params_t *p, uint64_t size,
                                 const char **why);

/* A decoder of enc with the guard lim; NULL as for moxy_coder_encoder. */
moxy_coder_t *moxy_coder_decoder(moxy_coders_t *cs, int enc, const moxy_dec_limits_t *lim, const char **why);

/* Feed c the n bytes at in, what (MOXY_CODE_*) says what follows; what it
 * makes is appended to out.  MOXY_OK; MOXY_ERROR when the input is not
 * valid for a decoder, passes its guard, or a library fails: *why says
 * which (and MOXY_DECLINED, not MOXY_ERROR, for the guard).  After END (or
 * an error) c takes nothing more. */
int moxy_coder_run(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why);

/* Bytes c took in and gave out so far. */
uint64_t moxy_coder_in(const moxy_coder_t *c);
uint64_t moxy_coder_out(const moxy_coder_t *c);

/* Give c back to its set: kept for the next body when it ended cleanly
 * and the set keeps few of its kind, else freed. */
void moxy_coder_put(moxy_coder_t *c);

#endif

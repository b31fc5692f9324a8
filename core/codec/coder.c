/*
 * coder.c -- gzip, br and zstd streamed through zlib, libbrotli and
 * libzstd; see coder.h.
 */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createCCtx_advanced (our allocator), ZSTD_c_srcSizeHint */
#include "codec/coder.h"
#include "base/moxy.h"

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <event2/buffer.h>
#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

/* Output is written in pieces that fill a 16 KiB block of libevent's
 * (its chain header takes the rest). */
#define OUT_PIECE (16384 - 256)
/* Finished coders a set keeps per kind (encoder or decoder of a coding). */
#define KEEP_IDLE 4
/* The ratio guard starts past this many decoded bytes: small bodies that
 * compress very well are no bomb. */
#define RATIO_FROM ((uint64_t)1 << 20)
/* zstd's largest window, for what moxy makes and what it reads: 8 MiB, as
 * RFC 9659 asks of HTTP's zstd (a frame that needs more is refused). */
#define ZSTD_WINDOW_MAX 23

struct moxy_coders_s {
    size_t used;   /* bytes the libraries hold, by malloc_usable_size */
    size_t budget; /* 0: no limit */
    moxy_coder_t *idle[2][MOXY_ENC_COUNT]; /* [decode][enc]: finished, kept */
    int nidle[2][MOXY_ENC_COUNT];
};

struct moxy_coder_s {
    moxy_coders_t *cs;
    uint8_t enc;
    uint8_t decode;
    uint8_t ended;  /* the input's end was handed over (or a decoder saw its stream end) */
    uint8_t failed; /* an error: takes nothing more, not kept */
    uint8_t member_end; /* gzip decoder: a member ended; more input starts another */
    uint8_t trailing;   /* gzip decoder: what follows the last member is ignored */
    moxy_enc_params_t p; /* an encoder's, as used (the window may be smaller than asked) */
    moxy_dec_limits_t lim;
    uint64_t in, out;
    union {
        z_stream z;
        BrotliEncoderState *be;
        BrotliDecoderState *bd;
        ZSTD_CCtx *zc;
        ZSTD_DCtx *zd;
    } u;
    moxy_coder_t *next; /* in the set's idle list */
};

/* --- names --- */

static const char *const enc_names[MOXY_ENC_COUNT] = {"identity", "gzip", "br", "zstd"};

const char *moxy_enc_name(int enc)
{
    return enc >= 0 && enc < MOXY_ENC_COUNT ? enc_names[enc] : "?";
}

int moxy_enc_parse(const char *s, size_t n)
{
    for (int e = 0; e < MOXY_ENC_COUNT; e++)
        if (moxy_strieq(s, n, enc_names[e], strlen(enc_names[e]))) return e;
    if (MOXY_STRIEQ_LIT(s, n, "x-gzip")) return MOXY_ENC_GZIP;
    return -1;
}

/* --- the libraries' memory, counted --- */

static void *cs_alloc(moxy_coders_t *cs, size_t n)
{
    void *p = malloc(n);
    if (p) cs->used += malloc_usable_size(p);
    return p;
}

static void cs_free(moxy_coders_t *cs, void *p)
{
    if (!p) return;
    cs->used -= malloc_usable_size(p);
    free(p);
}

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    if (size && items > SIZE_MAX / size) return Z_NULL;
    return cs_alloc(opaque, (size_t)items * size);
}

static void z_free(voidpf opaque, voidpf p)
{
    cs_free(opaque, p);
}

static void *lib_alloc(void *opaque, size_t n)
{
    return cs_alloc(opaque, n);
}

static void lib_free(void *opaque, void *p)
{
    cs_free(opaque, p);
}

/* --- the set --- */

moxy_coders_t *moxy_coders_new(size_t budget)
{
    moxy_coders_t *cs = calloc(1, sizeof(*cs));
    if (cs) cs->budget = budget;
    return cs;
}

void moxy_coders_set_budget(moxy_coders_t *cs, size_t budget)
{
    cs->budget = budget;
}

size_t moxy_coders_memory(const moxy_coders_t *cs)
{
    return cs->used;
}

static void coder_destroy(moxy_coder_t *c)
{
    moxy_coders_t *cs = c->cs;
    switch (c->enc) {
    case MOXY_ENC_GZIP:
        if (c->decode) inflateEnd(&c->u.z);
        else deflateEnd(&c->u.z);
        break;
    case MOXY_ENC_BR:
        if (c->decode) BrotliDecoderDestroyInstance(c->u.bd);
        else BrotliEncoderDestroyInstance(c->u.be);
        break;
    case MOXY_ENC_ZSTD:
        if (c->decode) ZSTD_freeDCtx(c->u.zd);
        else ZSTD_freeCCtx(c->u.zc);
        break;
    }
    cs_free(cs, c);
}

/* Free the kept coders (all of them), to make room. */
static void idle_drop(moxy_coders_t *cs)
{
    for (int d = 0; d < 2; d++)
        for (int e = 0; e < MOXY_ENC_COUNT; e++) {
            while (cs->idle[d][e]) {
                moxy_coder_t *c = cs->idle[d][e];
                cs->idle[d][e] = c->next;
                coder_destroy(c);
            }
            cs->nidle[d][e] = 0;
        }
}

void moxy_coders_free(moxy_coders_t *cs)
{
    if (!cs) return;
    idle_drop(cs);
    free(cs);
}

/* 1 when cs may make another coder: under its budget, once the kept ones
 * are gone if need be. */
static int room(moxy_coders_t *cs)
{
    if (!cs->budget || cs->used < cs->budget) return 1;
    idle_drop(cs);
    return cs->used < cs->budget;
}

/* A kept coder of the kind, whose parameters accept(c) takes, off the
 * idle list; or NULL. */
static moxy_coder_t *idle_take(moxy_coders_t *cs, int decode, int enc, const moxy_enc_params_t *want,
                               const moxy_enc_params_t *cap)
{
    for (moxy_coder_t **pp = &cs->idle[decode][enc]; *pp; pp = &(*pp)->next) {
        moxy_coder_t *c = *pp;
        /* an encoder: same level, a window and memory at least what this
         * body needs and no more than configured (a reload may lower them) */
        if (!decode && (c->p.level != want->level || c->p.window < want->window || c->p.window > cap->window ||
                        c->p.mem_level < want->mem_level || c->p.mem_level > cap->mem_level))
            continue;
        *pp = c->next;
        cs->nidle[decode][enc]--;
        c->next = NULL;
        c->in = c->out = 0;
        c->ended = c->failed = c->member_end = c->trailing = 0;
        return c;
    }
    return NULL;
}

/* A zeroed coder of cs for enc (its library state not made yet), or NULL
 * with *why: past the budget, out of memory. */
static moxy_coder_t *coder_new(moxy_coders_t *cs, int enc, int decode, const char **why)
{
    if (!room(cs)) {
        *why = "compression memory budget reached";
        return NULL;
    }
    moxy_coder_t *c = cs_alloc(cs, sizeof(*c));
    if (!c) {
        *why = "out of memory for a coder";
        return NULL;
    }
    memset(c, 0, sizeof(*c));
    c->cs = cs;
    c->enc = (uint8_t)enc;
    c->decode = (uint8_t)decode;
    return c;
}

/* --- encoders --- */

/* ceil(log2(n)) for n >= 1. */
static int log2_ceil(uint64_t n)
{
    int b = 0;
    while (b < 63 && ((uint64_t)1 << b) < n) b++;
    return b;
}

moxy_coder_t *moxy_coder_encoder(moxy_coders_t *cs, int enc, const moxy_enc_params_t *p, uint64_t size,
                                 const char **why)
{
    moxy_enc_params_t want = *p;
    /* a body smaller than the window needs no more of it (nor, for zlib,
     * of its hash: zlib's own rule of thumb, as nginx applies it) */
    if (size != UINT64_MAX && size > 0) {
        int need = MOXY_MAX(log2_ceil(size + 262) + 1, enc == MOXY_ENC_GZIP ? 9 : 10);
        if (need < want.window) {
            if (enc == MOXY_ENC_GZIP) want.mem_level = MOXY_MAX(1, want.mem_level - (want.window - need));
            want.window = need;
        }
    }
    moxy_coder_t *c = idle_take(cs, 0, enc, &want, p);
    if (c) {
        int ok = 1;
        if (enc == MOXY_ENC_GZIP) {
            ok = deflateReset(&c->u.z) == Z_OK;
        } else if (enc == MOXY_ENC_ZSTD) {
            ok = !ZSTD_isError(ZSTD_CCtx_reset(c->u.zc, ZSTD_reset_session_only));
            if (ok && size != UINT64_MAX)
                ok = !ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zc, ZSTD_c_srcSizeHint, (int)MOXY_MIN(size, INT_MAX)));
        }
        if (ok) return c;
        coder_destroy(c);
    }
    if (!(c = coder_new(cs, enc, 0, why))) return NULL;
    c->p = want;
    switch (enc) {
    case MOXY_ENC_GZIP:
        c->u.z.zalloc = z_alloc;
        c->u.z.zfree = z_free;
        c->u.z.opaque = cs;
        if (deflateInit2(&c->u.z, want.level, Z_DEFLATED, want.window + 16, want.mem_level, Z_DEFAULT_STRATEGY) !=
            Z_OK) {
            cs_free(cs, c);
            goto nomem;
        }
        return c;
    case MOXY_ENC_BR:
        c->u.be = BrotliEncoderCreateInstance(lib_alloc, lib_free, cs);
        if (!c->u.be) break;
        BrotliEncoderSetParameter(c->u.be, BROTLI_PARAM_QUALITY, (uint32_t)want.level);
        BrotliEncoderSetParameter(c->u.be, BROTLI_PARAM_LGWIN, (uint32_t)want.window);
        if (size != UINT64_MAX)
            BrotliEncoderSetParameter(c->u.be, BROTLI_PARAM_SIZE_HINT, (uint32_t)MOXY_MIN(size, 1u << 30));
        return c;
    case MOXY_ENC_ZSTD: {
        ZSTD_customMem mem = {lib_alloc, lib_free, cs};
        c->u.zc = ZSTD_createCCtx_advanced(mem);
        if (!c->u.zc) break;
        int ok = !ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zc, ZSTD_c_compressionLevel, want.level)) &&
                 !ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zc, ZSTD_c_windowLog, MOXY_MIN(want.window, ZSTD_WINDOW_MAX)));
        if (ok && size != UINT64_MAX)
            ok = !ZSTD_isError(ZSTD_CCtx_setParameter(c->u.zc, ZSTD_c_srcSizeHint, (int)MOXY_MIN(size, INT_MAX)));
        if (ok) return c;
        ZSTD_freeCCtx(c->u.zc);
        break;
    }
    }
    cs_free(cs, c);
nomem:
    *why = "out of memory for a compressor";
    return NULL;
}

moxy_coder_t *moxy_coder_decoder(moxy_coders_t *cs, int enc, const moxy_dec_limits_t *lim, const char **why)
{
    moxy_coder_t *c = idle_take(cs, 1, enc, NULL, NULL);
    if (c) {
        int ok = 1;
        if (enc == MOXY_ENC_GZIP) ok = inflateReset(&c->u.z) == Z_OK;
        else if (enc == MOXY_ENC_ZSTD) ok = !ZSTD_isError(ZSTD_DCtx_reset(c->u.zd, ZSTD_reset_session_only));
        if (ok) {
            c->lim = *lim;
            return c;
        }
        coder_destroy(c);
    }
    if (!(c = coder_new(cs, enc, 1, why))) return NULL;
    c->lim = *lim;
    switch (enc) {
    case MOXY_ENC_GZIP:
        c->u.z.zalloc = z_alloc;
        c->u.z.zfree = z_free;
        c->u.z.opaque = cs;
        if (inflateInit2(&c->u.z, 15 + 16) == Z_OK) return c; /* gzip only */
        break;
    case MOXY_ENC_BR:
        c->u.bd = BrotliDecoderCreateInstance(lib_alloc, lib_free, cs);
        if (c->u.bd) return c;
        break;
    case MOXY_ENC_ZSTD: {
        ZSTD_customMem mem = {lib_alloc, lib_free, cs};
        c->u.zd = ZSTD_createDCtx_advanced(mem);
        if (!c->u.zd) break;
        if (!ZSTD_isError(ZSTD_DCtx_setParameter(c->u.zd, ZSTD_d_windowLogMax, ZSTD_WINDOW_MAX))) return c;
        ZSTD_freeDCtx(c->u.zd);
        break;
    }
    }
    cs_free(cs, c);
    *why = "out of memory for a decompressor";
    return NULL;
}

void moxy_coder_put(moxy_coder_t *c)
{
    if (!c) return;
    moxy_coders_t *cs = c->cs;
    int d = c->decode, e = c->enc;
    /* brotli's states cannot be reset: made again for each body */
    if (c->failed || e == MOXY_ENC_BR || cs->nidle[d][e] >= KEEP_IDLE || (cs->budget && cs->used > cs->budget)) {
        coder_destroy(c);
        return;
    }
    c->next = cs->idle[d][e];
    cs->idle[d][e] = c;
    cs->nidle[d][e]++;
}

uint64_t moxy_coder_in(const moxy_coder_t *c)
{
    return c->in;
}

uint64_t moxy_coder_out(const moxy_coder_t *c)
{
    return c->out;
}

/* --- running --- */

/* Room for the next piece of output at the end of out: *v. */
static int out_reserve(struct evbuffer *out, struct evbuffer_iovec *v)
{
    if (evbuffer_reserve_space(out, OUT_PIECE, v, 1) < 1) return MOXY_ERROR;
    if (v->iov_len > UINT_MAX) v->iov_len = UINT_MAX;
    return MOXY_OK;
}

/* made bytes of *v were written: they join out.  For a decoder, MOXY_DECLINED
 * when the guard stops it. */
static int out_commit(moxy_coder_t *c, struct evbuffer *out, struct evbuffer_iovec *v, size_t made,
                      const char **why)
{
    v->iov_len = made;
    if (made && evbuffer_commit_space(out, v, 1) != 0) {
        *why = "out of memory";
        return MOXY_ERROR;
    }
    c->out += made;
    if (c->decode) {
        if (c->out > c->lim.max_size) {
            *why = "decompressed body larger than decompress.max_size";
            return MOXY_DECLINED;
        }
        if (c->out > RATIO_FROM && (double)c->out > (double)c->in * c->lim.max_ratio) {
            *why = "decompression ratio above decompress.max_ratio";
            return MOXY_DECLINED;
        }
    }
    return MOXY_OK;
}

static int run_deflate(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why)
{
    z_stream *z = &c->u.z;
    int flush = what == MOXY_CODE_END ? Z_FINISH : what == MOXY_CODE_FLUSH ? Z_SYNC_FLUSH : Z_NO_FLUSH;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n; /* n <= UINT_MAX: moxy_coder_run's pieces */
    for (;;) {
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) goto nomem;
        z->next_out = v.iov_base;
        z->avail_out = (uInt)v.iov_len;
        int rc = deflate(z, flush);
        size_t made = v.iov_len - z->avail_out;
        if (out_commit(c, out, &v, made, why) != MOXY_OK) return MOXY_ERROR;
        if (rc == Z_STREAM_END) return MOXY_OK;
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            *why = "zlib failed";
            return MOXY_ERROR;
        }
        /* done when the input is in and the output did not fill the room */
        if (z->avail_in == 0 && z->avail_out != 0 && flush != Z_FINISH) return MOXY_OK;
    }
nomem:
    *why = "out of memory";
    return MOXY_ERROR;
}

static int run_inflate(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why)
{
    z_stream *z = &c->u.z;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    for (;;) {
        if (c->member_end) {
            if (z->avail_in == 0 || c->trailing) return MOXY_OK;
            if (z->next_in[0] != 0x1f) {
                /* bytes after the last member that start none: ignored, as
                 * browsers do (padding some servers add) */
                c->trailing = 1;
                return MOXY_OK;
            }
            /* another gzip member follows (RFC 1952 2.2) */
            if (inflateReset(z) != Z_OK) goto bad;
            c->member_end = 0;
        }
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) {
            *why = "out of memory";
            return MOXY_ERROR;
        }
        z->next_out = v.iov_base;
        z->avail_out = (uInt)v.iov_len;
        int rc = inflate(z, Z_NO_FLUSH);
        int grc = out_commit(c, out, &v, v.iov_len - z->avail_out, why);
        if (grc != MOXY_OK) return grc;
        if (rc == Z_STREAM_END) {
            c->member_end = 1;
            continue;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) goto bad;
        if (z->avail_out == 0) continue; /* the room filled: more may be waiting */
        if (z->avail_in > 0) {
            if (rc == Z_BUF_ERROR) goto bad; /* no progress with input and room */
            continue;
        }
        if (what == MOXY_CODE_END) {
            *why = "compressed body cut short";
            return MOXY_ERROR;
        }
        return MOXY_OK;
    }
bad:
    *why = "invalid gzip data";
    return MOXY_ERROR;
}

static int run_brotli_enc(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out,
                          const char **why)
{
    BrotliEncoderOperation op = what == MOXY_CODE_END     ? BROTLI_OPERATION_FINISH
                                : what == MOXY_CODE_FLUSH ? BROTLI_OPERATION_FLUSH
                                                          : BROTLI_OPERATION_PROCESS;
    const uint8_t *next_in = (const uint8_t *)in;
    size_t avail_in = n;
    for (;;) {
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) {
            *why = "out of memory";
            return MOXY_ERROR;
        }
        uint8_t *next_out = v.iov_base;
        size_t avail_out = v.iov_len;
        if (!BrotliEncoderCompressStream(c->u.be, op, &avail_in, &next_in, &avail_out, &next_out, NULL)) {
            out_commit(c, out, &v, 0, why);
            *why = "brotli failed";
            return MOXY_ERROR;
        }
        if (out_commit(c, out, &v, v.iov_len - avail_out, why) != MOXY_OK) return MOXY_ERROR;
        if (avail_in > 0 || BrotliEncoderHasMoreOutput(c->u.be)) continue;
        if (op == BROTLI_OPERATION_FINISH && !BrotliEncoderIsFinished(c->u.be)) continue;
        return MOXY_OK;
    }
}

static int run_brotli_dec(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out,
                          const char **why)
{
    const uint8_t *next_in = (const uint8_t *)in;
    size_t avail_in = n;
    for (;;) {
        if (c->member_end) {
            if (avail_in) goto bad; /* bytes after the stream's end */
            return MOXY_OK;
        }
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) {
            *why = "out of memory";
            return MOXY_ERROR;
        }
        uint8_t *next_out = v.iov_base;
        size_t avail_out = v.iov_len;
        BrotliDecoderResult rc = BrotliDecoderDecompressStream(c->u.bd, &avail_in, &next_in, &avail_out, &next_out, NULL);
        int grc = out_commit(c, out, &v, v.iov_len - avail_out, why);
        if (grc != MOXY_OK) return grc;
        if (rc == BROTLI_DECODER_RESULT_SUCCESS) {
            c->member_end = 1;
            continue;
        }
        if (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT) continue;
        if (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) {
            if (what == MOXY_CODE_END) {
                *why = "compressed body cut short";
                return MOXY_ERROR;
            }
            return MOXY_OK;
        }
        goto bad;
    }
bad:
    *why = "invalid brotli data";
    return MOXY_ERROR;
}

static int run_zstd_enc(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why)
{
    ZSTD_EndDirective mode = what == MOXY_CODE_END ? ZSTD_e_end : what == MOXY_CODE_FLUSH ? ZSTD_e_flush : ZSTD_e_continue;
    ZSTD_inBuffer ib = {in, n, 0};
    for (;;) {
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) {
            *why = "out of memory";
            return MOXY_ERROR;
        }
        ZSTD_outBuffer ob = {v.iov_base, v.iov_len, 0};
        size_t left = ZSTD_compressStream2(c->u.zc, &ob, &ib, mode);
        if (out_commit(c, out, &v, ob.pos, why) != MOXY_OK) return MOXY_ERROR;
        if (ZSTD_isError(left)) {
            *why = "zstd failed";
            return MOXY_ERROR;
        }
        if (mode == ZSTD_e_continue ? ib.pos == ib.size : left == 0) return MOXY_OK;
    }
}

static int run_zstd_dec(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why)
{
    /* no input: nothing to ask of zstd, whose hint after a complete frame is
     * the next frame's header (not 0) -- the end came apart from the last
     * bytes (found by fuzz/http_response_fuzz.c: such bodies were cut) */
    if (n == 0 && c->member_end) return MOXY_OK;
    ZSTD_inBuffer ib = {in, n, 0};
    for (;;) {
        struct evbuffer_iovec v;
        if (out_reserve(out, &v) != MOXY_OK) {
            *why = "out of memory";
            return MOXY_ERROR;
        }
        ZSTD_outBuffer ob = {v.iov_base, v.iov_len, 0};
        size_t rc = ZSTD_decompressStream(c->u.zd, &ob, &ib);
        if (ZSTD_isError(rc)) {
            out_commit(c, out, &v, 0, why);
            *why = ZSTD_getErrorCode(rc) == ZSTD_error_frameParameter_windowTooLarge
                       ? "zstd window larger than 8 MiB"
                       : "invalid zstd data";
            return MOXY_ERROR;
        }
        int grc = out_commit(c, out, &v, ob.pos, why);
        if (grc != MOXY_OK) return grc;
        c->member_end = rc == 0; /* a frame ended and all of it is out */
        if (ob.pos == ob.size) continue; /* the room filled: more may be waiting */
        if (ib.pos < ib.size) continue;
        if (what == MOXY_CODE_END && !c->member_end) {
            *why = "compressed body cut short";
            return MOXY_ERROR;
        }
        return MOXY_OK;
    }
}

int moxy_coder_run(moxy_coder_t *c, const char *in, size_t n, int what, struct evbuffer *out, const char **why)
{
    if (c->ended || c->failed) {
        *why = "coder used after its end";
        return MOXY_ERROR;
    }
    int rc = MOXY_OK;
    /* a coded body of no bytes at all (Content-Encoding on an empty body)
     * decodes to nothing */
    if (c->decode && what == MOXY_CODE_END && n == 0 && c->in == 0) {
        c->ended = 1;
        return MOXY_OK;
    }
    /* zlib counts in uInt: pieces of at most 1 GiB */
    do {
        size_t piece = MOXY_MIN(n, (size_t)1 << 30);
        int w = piece < n ? MOXY_CODE_MORE : what;
        c->in += piece;
        switch (c->enc * 2 + c->decode) {
        case MOXY_ENC_GZIP * 2: rc = run_deflate(c, in, piece, w, out, why); break;
        case MOXY_ENC_GZIP * 2 + 1: rc = run_inflate(c, in, piece, w, out, why); break;
        case MOXY_ENC_BR * 2: rc = run_brotli_enc(c, in, piece, w, out, why); break;
        case MOXY_ENC_BR * 2 + 1: rc = run_brotli_dec(c, in, piece, w, out, why); break;
        case MOXY_ENC_ZSTD * 2: rc = run_zstd_enc(c, in, piece, w, out, why); break;
        case MOXY_ENC_ZSTD * 2 + 1: rc = run_zstd_dec(c, in, piece, w, out, why); break;
        default: *why = "no such coding"; rc = MOXY_ERROR;
        }
        in += piece;
        n -= piece;
    } while (rc == MOXY_OK && n > 0);
    if (rc != MOXY_OK) c->failed = 1;
    else if (what == MOXY_CODE_END) c->ended = 1;
    return rc;
}

/*
 * compress.h -- a response's content coding on the way out: compressed
 * for a client that accepts gzip, br or zstd, or decoded for one that does
 * not accept what the origin sent.  The last stage of the body's chain
 * (body_filter.h): after the taps (the cache stores what the origin sent)
 * and after on_body.
 *
 * moxy_compress_start decides, before the head goes, from the request's
 * Accept-Encoding, the response's fields, the configuration (the pool's,
 * else the listener's, else the top level's `compression`) and what
 * on_response asked (txn.resp:compress); it rewrites the head's fields
 * (Content-Encoding, Vary, a weak ETag, no Accept-Ranges) and sets
 * r->coder.  moxy_compress_run then codes the body as it comes.
 */
#ifndef MOXY_COMPRESS_H
#define MOXY_COMPRESS_H

#include "http/http-t.h"

struct evbuffer;

/* What r->coding says the stage does. */
enum { MOXY_CODING_NONE = 0, MOXY_CODING_ENCODE, MOXY_CODING_DECODE };

/* Decide r's coding and rewrite its head's fields for it (r->coder set
 * when the body is to be coded).  Call once, before r's head is sent.
 * MOXY_ERROR: out of memory. */
int moxy_compress_start(moxy_req_t *r);

/* 1 when r's response, as its head now stands, is one the stage would
 * compress for a client that accepts a coding (the cache asks before it
 * turns a hit into a 304, whose fields must be its 200's). */
int moxy_compress_eligible(const moxy_req_t *r);

/* Code all of in (drained) into r->coded; final: the body ends there.
 * MOXY_OK; MOXY_ERROR with *why: the coder failed (a decoder's bad input,
 * out of memory); MOXY_DECLINED with *why: a decoder's guard stopped it
 * (a bomb).  Counted in the worker's stats either way. */
int moxy_compress_run(moxy_req_t *r, struct evbuffer *in, int final, const char **why);

/* txn:read_body{decode = true}: r's buffered request body decoded when
 * its Content-Encoding is gzip, br or zstd (the Content-Encoding field
 * then goes; the body goes to the origin with its new length), with the
 * response decoder's guard (decompress.max_size, or max when smaller, and
 * max_ratio).  MOXY_OK (also for a body without a coding); MOXY_ERROR with
 * r->body_status and r->body_error: 415 for a coding moxy does not decode,
 * 400 for data that does not decode, 413 past the guard. */
int moxy_compress_decode_body(moxy_req_t *r, uint64_t max);

/* r's body will not be coded after all (a cache hit answered with the
 * coded variant the cache keeps): its coder goes back unused, and the
 * stage runs only if on_body hooks do.  Before any body byte; the head's
 * fields stay as moxy_compress_start made them. */
void moxy_compress_cancel(moxy_req_t *r);

/* As moxy_compress_cancel, but r's coder is handed to the caller (who
 * puts it back and counts what it coded): the cache's job that makes a
 * compressed copy from the stored body. */
struct moxy_coder_s *moxy_compress_take(moxy_req_t *r);

/* A coder of w that is done (a decoder if decode, of enc): what it took
 * in and gave out counted in w's stats, the coder back to w's set. */
void moxy_compress_count(moxy_worker_t *w, int decode, int enc, struct moxy_coder_s *c);

/* r ends: its coder goes back to the worker (its bytes counted), its
 * buffer too.  body_filter.c's cleanup calls it. */
void moxy_compress_end(moxy_req_t *r);

/* What r's coder does, for logs: "gzip compression", "br decoding". */
const char *moxy_compress_what(const moxy_req_t *r);

/* The media type at v (a Content-Type value, n bytes) matches one of the
 * patterns ("type/subtype", "type" + "/" + "*", "type/" + "*+suffix"). */
int moxy_media_type_match(char *const *patterns, int n, const char *v, size_t vlen);

#endif
